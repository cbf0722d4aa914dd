//! Pure rules of the WhatsApp Cloud API and of pregon's own policy.
//!
//! Nothing in here performs I/O: every function takes plain values and returns plain values, so the
//! rules that keep a business's numbers safe are unit-tested without any server running.

pub mod callback;
pub mod campaign;
pub mod csv;
pub mod decision;
pub mod duration;
pub mod errors;
pub mod job;
pub mod message;
pub mod pacing;
pub mod phone;
pub mod policy;
pub mod reason;
pub mod refusal;
pub mod retry;
pub mod text;
pub mod tier;
pub mod webhook;

/// What a message is for; decides pricing, consent needs and which lane it travels in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Marketing,
    Utility,
    Authentication,
    /// Free-form messages (text, media, interactive) that are only allowed inside a service window.
    Service,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Utility => "utility",
            Category::Authentication => "authentication",
            Category::Service => "service",
        }
    }

    pub fn parse(raw: &str) -> Option<Category> {
        match raw.to_ascii_lowercase().as_str() {
            "marketing" | "marketing_lite" => Some(Category::Marketing),
            "utility" => Some(Category::Utility),
            "authentication" | "authentication_international" => Some(Category::Authentication),
            "service" => Some(Category::Service),
            _ => None,
        }
    }

    /// A template's category as Meta names it (any case): marketing, utility or authentication.
    /// Service is not a template category.
    pub fn of_template(raw: &str) -> Option<Category> {
        Category::parse(raw).filter(|c| *c != Category::Service)
    }

    pub fn lane(self) -> Lane {
        match self {
            Category::Marketing => Lane::Marketing,
            _ => Lane::Transactional,
        }
    }
}

impl TryFrom<String> for Category {
    type Error = String;
    fn try_from(raw: String) -> Result<Category, String> {
        Category::parse(&raw).ok_or_else(|| format!("unknown category {raw}"))
    }
}

/// The queue a message waits in. Transactional traffic has its own lane so a large campaign never
/// delays an OTP or an order update on the same number.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Transactional,
    Marketing,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Transactional, Lane::Marketing];

    pub fn suffix(self) -> &'static str {
        match self {
            Lane::Transactional => "tx",
            Lane::Marketing => "mk",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Lane::Transactional => 0,
            Lane::Marketing => 1,
        }
    }
}

/// Where a message is. Writes move it forward only: from a final state it never goes back to a
/// non-final one, and Meta's statuses only move a sent message on (sent → delivered → read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    /// A campaign message written at planning, not yet handed to RabbitMQ (or handed back on pause).
    Planned,
    Queued,
    Deferred,
    Sent,
    Delivered,
    Read,
    Failed,
    Skipped,
    /// Its campaign was cancelled or reached its end-by time before it was sent.
    Cancelled,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 9] = [
        MessageStatus::Planned,
        MessageStatus::Queued,
        MessageStatus::Deferred,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::Skipped,
        MessageStatus::Cancelled,
    ];

    /// The stable code stored in PostgreSQL and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Planned => "planned",
            MessageStatus::Queued => "queued",
            MessageStatus::Deferred => "deferred",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Skipped => "skipped",
            MessageStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Meta accepted the message (delivered and read are sent messages Meta reported on).
    pub fn is_sent(self) -> bool {
        matches!(
            self,
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read
        )
    }

    /// Nothing more will be attempted (delivered and read are sent messages Meta reported on).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            MessageStatus::Planned | MessageStatus::Queued | MessageStatus::Deferred
        )
    }
}

impl TryFrom<String> for MessageStatus {
    type Error = String;
    fn try_from(raw: String) -> Result<MessageStatus, String> {
        MessageStatus::parse(&raw).ok_or_else(|| format!("unknown message status {raw}"))
    }
}

impl serde::Serialize for MessageStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for MessageStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MessageStatus".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = MessageStatus::ALL.iter().map(|s| s.as_str()).collect();
        schemars::json_schema!({"type": "string", "enum": codes})
    }
}

/// What to do when the outcome of a send is unknown (the process died during the HTTP call).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Never risk a duplicate: an unknown outcome is recorded as failed.
    #[default]
    AtMostOnce,
    /// Never risk a loss: an unknown outcome is sent again.
    AtLeastOnce,
}

impl DeliveryMode {
    pub fn parse(raw: &str) -> Option<DeliveryMode> {
        match raw {
            "at_most_once" | "at-most-once" => Some(DeliveryMode::AtMostOnce),
            "at_least_once" | "at-least-once" => Some(DeliveryMode::AtLeastOnce),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_statuses_read_back_and_only_three_are_open() {
        for status in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(status.as_str()), Some(status));
        }
        let open: Vec<_> = MessageStatus::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(
            open,
            [
                MessageStatus::Planned,
                MessageStatus::Queued,
                MessageStatus::Deferred
            ]
        );
        assert!(MessageStatus::try_from("lost".to_string()).is_err());
    }
}
