//! Who is left out of a campaign, and why: the send decision's recipient verdict plus the rule
//! that Meta delivers no marketing to US numbers.

use serde::{Deserialize, Serialize};

use crate::domain::Category;
use crate::domain::DeliveryMode;
use crate::domain::decision::{Consent, Facts, recipient_verdict};
use crate::domain::reason::Reason;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    InvalidNumber,
    Duplicate,
    NoOptIn,
    OptedOut,
    Suppressed,
    MissingVariable,
    UsMarketing,
}

impl Exclusion {
    pub const ALL: [Exclusion; 7] = [
        Exclusion::InvalidNumber,
        Exclusion::Duplicate,
        Exclusion::NoOptIn,
        Exclusion::OptedOut,
        Exclusion::Suppressed,
        Exclusion::MissingVariable,
        Exclusion::UsMarketing,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Exclusion::InvalidNumber => "invalid_number",
            Exclusion::Duplicate => "duplicate",
            Exclusion::NoOptIn => "no_opt_in",
            Exclusion::OptedOut => "opted_out",
            Exclusion::Suppressed => "suppressed",
            Exclusion::MissingVariable => "missing_variable",
            Exclusion::UsMarketing => "us_number_marketing",
        }
    }
}

/// Whether a valid, unique recipient is left out of a campaign of this category. Variables are
/// checked apart (they need the rendered template).
pub fn exclusion(
    category: Category,
    country: &str,
    consent: &Consent,
    suppressed: bool,
) -> Option<Exclusion> {
    let facts = Facts {
        category,
        free_form: false,
        delivery: DeliveryMode::AtMostOnce,
    };
    // A campaign sends templates and counts no window: the recipient verdict alone decides.
    if let Some(reason) = recipient_verdict(&facts, consent, false, suppressed) {
        return Some(match reason {
            Reason::RecipientSuppressed => Exclusion::Suppressed,
            Reason::NoMarketingOptIn => Exclusion::NoOptIn,
            _ => Exclusion::OptedOut,
        });
    }
    if category == Category::Marketing && country == "US" {
        // Meta has not delivered marketing templates to +1 (US) numbers since 2025-04-01.
        return Some(Exclusion::UsMarketing);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::ConsentAction;

    #[test]
    fn exclusions_follow_consent_suppression_and_the_us_rule() {
        let opted_in = Consent {
            marketing: Some(ConsentAction::OptIn),
            utility: None,
        };
        let none = Consent {
            marketing: None,
            utility: None,
        };
        let out = Consent {
            marketing: Some(ConsentAction::OptOut),
            utility: None,
        };
        let m = Category::Marketing;
        assert_eq!(exclusion(m, "MX", &opted_in, false), None);
        assert_eq!(exclusion(m, "MX", &none, false), Some(Exclusion::NoOptIn));
        assert_eq!(exclusion(m, "MX", &out, false), Some(Exclusion::OptedOut));
        assert_eq!(
            exclusion(m, "MX", &opted_in, true),
            Some(Exclusion::Suppressed)
        );
        assert_eq!(
            exclusion(m, "US", &opted_in, false),
            Some(Exclusion::UsMarketing)
        );
        assert_eq!(exclusion(Category::Utility, "US", &none, false), None);
    }
}
