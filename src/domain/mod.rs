//! Pure rules of the WhatsApp Cloud API and of pregon's own policy.
//!
//! Nothing in here performs I/O: every function takes plain values and returns plain values, so the
//! rules that keep a business's numbers safe are unit-tested without any server running.

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
pub mod tier;
pub mod webhook;

/// What a message is for; decides pricing, consent needs and which lane it travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

/// What to do when the outcome of a send is unknown (the process died during the HTTP call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
