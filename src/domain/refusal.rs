//! A request the caller must fix: what kind of refusal, a stable code, the field at fault and a
//! sentence for a person. Use cases refuse with this; only the API turns a kind into an HTTP
//! status (`api/error.rs`), and direct ingest turns it into a refusal event.

/// What kind of refusal, in the caller's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request is malformed: a field is missing, of the wrong type or out of range.
    Invalid,
    /// Well formed, but a rule forbids it: no opt-in, a template not approved, …
    Rejected,
    /// What it names does not exist (a template, a campaign, a list).
    NotFound,
    /// It conflicts with the current state: launched twice, a key still being used, …
    Conflict,
    /// The caller may not do this to what it names.
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    /// Stable, machine-readable: `invalid_field`, `recipient_opted_out`, …
    pub code: &'static str,
    /// The field at fault, as the caller wrote it (`template.name`, `audience.tags`), if any.
    pub field: Option<String>,
    pub message: String,
}

impl Refusal {
    pub fn new(
        kind: RefusalKind,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            kind,
            code,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, code, field, message)
    }

    pub fn rejected(code: &'static str, field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Rejected, code, field, message)
    }

    pub fn not_found(code: &'static str, field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::NotFound, code, field, message)
    }

    pub fn conflict(code: &'static str, field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Conflict, code, field, message)
    }

    pub fn forbidden(code: &'static str, field: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Forbidden, code, field, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_field_means_none() {
        let r = Refusal::invalid("invalid_body", "", "not JSON");
        assert_eq!(r.field, None);
        assert_eq!(r.to_string(), "not JSON");
        let r = Refusal::rejected("recipient_opted_out", "to", "opted out");
        assert_eq!(r.field.as_deref(), Some("to"));
        assert_eq!(r.kind, RefusalKind::Rejected);
    }
}
