//! Campaign rules: template parameter slots and per-recipient variables, who is left out and why,
//! quiet hours in the recipient's local time, which sender a recipient sticks to, how long a
//! campaign will take, what it will cost (from a rate card) and which state changes are allowed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Category;
use super::DeliveryMode;
use super::decision::{Consent, Facts, recipient_verdict};
use super::reason::Reason;

// -- template parameters --------------------------------------------------------------------

/// The parameter slots a template needs, from its components as the Cloud API lists them:
/// `header.1`, `body.1`, `body.2` (or named: `body.first_name`) and `button.{index}.1` for URL
/// buttons with a variable suffix. Order: header, body, buttons.
pub fn parameter_slots(components: &Value) -> Vec<String> {
    let mut slots = Vec::new();
    let Some(list) = components.as_array() else {
        return slots;
    };
    for component in list {
        let kind = component
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        match kind.as_str() {
            "header" | "body" => {
                let text_format = component
                    .get("format")
                    .and_then(Value::as_str)
                    .is_none_or(|f| f.eq_ignore_ascii_case("text"));
                if let (true, Some(text)) =
                    (text_format, component.get("text").and_then(Value::as_str))
                {
                    for name in placeholders(text) {
                        slots.push(format!("{kind}.{name}"));
                    }
                }
            }
            "buttons" => {
                let buttons = component.get("buttons").and_then(Value::as_array);
                for (index, button) in buttons.into_iter().flatten().enumerate() {
                    let is_url = button
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case("url"));
                    let url = button.get("url").and_then(Value::as_str).unwrap_or("");
                    if is_url && !placeholders(url).is_empty() {
                        slots.push(format!("button.{index}.1"));
                    }
                }
            }
            _ => {}
        }
    }
    slots
}

/// `{{1}}`, `{{2}}` or `{{first_name}}` placeholders of a template text, each once, in order.
fn placeholders(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !found.iter().any(|f| f == name)
        {
            found.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

/// Where one template parameter's value comes from for each recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSource {
    /// A contact field (`name`, `language`, `country`, `phone`) or a key of its attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// A fixed value for every recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Used when the attribute is missing or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

pub type VariableMap = BTreeMap<String, VariableSource>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the template needs {expected} parameters ({slots}); the mapping gives {given}")]
    CountMismatch {
        expected: usize,
        given: usize,
        slots: String,
    },
    #[error("the template has no parameter {0}")]
    UnknownSlot(String),
    #[error("parameter {0} needs exactly one of attribute or value")]
    NoSource(String),
}

/// The mapping names every slot of the template, and nothing else.
pub fn validate_mapping(slots: &[String], mapping: &VariableMap) -> Result<(), MappingError> {
    for (slot, source) in mapping {
        if !slots.contains(slot) {
            return Err(MappingError::UnknownSlot(slot.clone()));
        }
        if source.attribute.is_some() == source.value.is_some() {
            return Err(MappingError::NoSource(slot.clone()));
        }
    }
    if mapping.len() != slots.len() {
        return Err(MappingError::CountMismatch {
            expected: slots.len(),
            given: mapping.len(),
            slots: slots.join(", "),
        });
    }
    Ok(())
}

/// What the variables of one recipient are drawn from.
#[derive(Debug, Clone, Copy)]
pub struct ContactView<'a> {
    pub phone: &'a str,
    pub name: Option<&'a str>,
    pub language: Option<&'a str>,
    pub country: &'a str,
    pub attributes: &'a Value,
}

impl ContactView<'_> {
    fn lookup(&self, attribute: &str) -> Option<String> {
        let found = match attribute {
            "name" => self.name.map(str::to_string),
            "language" => self.language.map(str::to_string),
            "country" => Some(self.country.to_string()),
            "phone" => Some(self.phone.to_string()),
            key => match self.attributes.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            },
        };
        found.filter(|v| !v.trim().is_empty())
    }
}

/// The template `components` for one recipient, or the first slot with no value and no default.
pub fn render_components(
    slots: &[String],
    mapping: &VariableMap,
    contact: &ContactView<'_>,
) -> Result<Value, String> {
    let mut header = Vec::new();
    let mut body = Vec::new();
    let mut buttons: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for slot in slots {
        let source = mapping.get(slot).ok_or_else(|| slot.clone())?;
        let value = match (&source.value, &source.attribute) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(attribute)) => contact.lookup(attribute),
            (None, None) => None,
        }
        .or_else(|| source.default.clone())
        .ok_or_else(|| slot.clone())?;
        let mut parts = slot.splitn(3, '.');
        let kind = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("");
        let mut parameter = json!({"type": "text", "text": value});
        if !name.chars().all(|c| c.is_ascii_digit()) && kind != "button" {
            parameter["parameter_name"] = json!(name);
        }
        match kind {
            "header" => header.push(parameter),
            "button" => buttons
                .entry(name.parse().unwrap_or(0))
                .or_default()
                .push(parameter),
            _ => body.push(parameter),
        }
    }
    let mut components = Vec::new();
    if !header.is_empty() {
        components.push(json!({"type": "header", "parameters": header}));
    }
    if !body.is_empty() {
        components.push(json!({"type": "body", "parameters": body}));
    }
    for (index, parameters) in buttons {
        components.push(
            json!({"type": "button", "sub_type": "url", "index": index.to_string(),
            "parameters": parameters}),
        );
    }
    Ok(Value::Array(components))
}

/// The Cloud API body of one campaign message.
pub fn message_body(to: &str, name: &str, language: &str, components: Value) -> Value {
    let mut template = json!({"name": name, "language": {"code": language}});
    if components.as_array().is_some_and(|c| !c.is_empty()) {
        template["components"] = components;
    }
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
        "type": "template", "template": template})
}

// -- who is left out ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

// -- quiet hours ---------------------------------------------------------------------------------

/// Hours (recipient's local time) in which a campaign does not send; may wrap midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl QuietHours {
    /// From `"21:00"` and `"09:00"`.
    pub fn parse(start: &str, end: &str) -> Result<QuietHours, String> {
        let start_minute = minute_of_day(start)?;
        let end_minute = minute_of_day(end)?;
        if start_minute == end_minute {
            return Err("quiet hours must start and end at different times".into());
        }
        Ok(QuietHours {
            start_minute,
            end_minute,
        })
    }

    /// How long until sending may start for a recipient whose clock is `offset_minutes` from UTC;
    /// zero outside quiet hours.
    pub fn wait(&self, now: DateTime<Utc>, offset_minutes: i32) -> Duration {
        let utc_minute = i64::from(now.hour() * 60 + now.minute());
        let local = (utc_minute + i64::from(offset_minutes)).rem_euclid(1440) as u32;
        let inside = if self.start_minute < self.end_minute {
            local >= self.start_minute && local < self.end_minute
        } else {
            local >= self.start_minute || local < self.end_minute
        };
        if !inside {
            return Duration::ZERO;
        }
        let minutes = (self.end_minute + 1440 - local) % 1440;
        Duration::from_secs(u64::from(minutes) * 60)
            .saturating_sub(Duration::from_secs(u64::from(now.second())))
    }
}

fn minute_of_day(raw: &str) -> Result<u32, String> {
    let (h, m) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{raw:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{raw:?} is not HH:MM"))?;
    if h > 23 || m > 59 {
        return Err(format!("{raw:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// Standard UTC offset (minutes) of a country's main population centre, for quiet hours. One offset
/// per calling-code country: daylight saving time and multi-zone countries are approximated (the
/// US and Canada share +1 and use US Eastern time; Brazil uses Brasília; Mexico uses Mexico City).
pub fn utc_offset_minutes(country: &str) -> i32 {
    match country {
        "MX" | "GT" | "SV" | "HN" | "NI" | "CR" => -360,
        "CO" | "PE" | "EC" | "PA" | "CU" | "US" => -300,
        "VE" | "BO" | "DO" | "PR" => -240,
        "AR" | "BR" | "UY" | "PY" | "CL" => -180,
        "GB" | "PT" => 0,
        "ES" | "FR" | "DE" | "IT" | "NL" | "BE" | "CH" | "AT" | "PL" | "SE" | "NO" | "DK" => 60,
        "IN" => 330,
        _ => 0,
    }
}

// -- senders -----------------------------------------------------------------------------------

/// The sender a recipient sticks to, among a pool weighted by remaining tier capacity (weighted
/// rendezvous hashing: the same recipient and pool always give the same sender, and removing a
/// sender moves only its own recipients).
pub fn pick_sender<'a>(recipient: &str, pool: &'a [(String, f64)]) -> Option<&'a str> {
    pool.iter()
        .filter(|(_, weight)| *weight > 0.0)
        .map(|(id, weight)| {
            let h = fnv1a(recipient.as_bytes(), id.as_bytes());
            // Uniform in (0, 1): never 0, so the logarithm is finite.
            let u = ((h >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
            (id.as_str(), -weight / u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id)
        .or_else(|| pool.first().map(|(id, _)| id.as_str()))
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so nearby inputs spread over the whole range.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// What a sender can still do for a campaign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderCapacity {
    pub mps: u32,
    /// Unique recipients it may still reach in the moving 24 h (None: unlimited).
    pub remaining: Option<u64>,
    /// Its limit per 24 h (None: unlimited).
    pub daily: Option<u64>,
}

/// The sender's share of recipients in a pool: proportional to what it may still reach today.
pub fn capacity_weight(c: &SenderCapacity) -> f64 {
    match c.remaining {
        None => 1_000_000.0,
        Some(r) => r as f64,
    }
}

/// How long sending `recipients` takes: throughput is the sum of the senders' mps (or the
/// campaign's rate cap, if lower); recipients beyond what the tiers allow today wait for the
/// moving 24 h window to free slots.
pub fn eta(recipients: u64, senders: &[SenderCapacity], rate_cap: Option<u32>) -> Duration {
    if recipients == 0 {
        return Duration::ZERO;
    }
    let mps: u64 = senders.iter().map(|s| u64::from(s.mps)).sum();
    let rate = match rate_cap {
        Some(cap) => mps.min(u64::from(cap)),
        None => mps,
    }
    .max(1);
    let sending = Duration::from_secs_f64(recipients as f64 / rate as f64);
    if senders.iter().any(|s| s.remaining.is_none()) {
        return sending;
    }
    let today: u64 = senders.iter().filter_map(|s| s.remaining).sum();
    if recipients <= today {
        return sending;
    }
    let daily: u64 = senders.iter().filter_map(|s| s.daily).sum::<u64>().max(1);
    let days = (recipients - today).div_ceil(daily);
    sending + Duration::from_secs(days * 86_400)
}

// -- cost ------------------------------------------------------------------------------------

/// Prices per delivered template by recipient country and category, with the date they hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateCard {
    pub valid_from: String,
    pub currency: String,
    prices: HashMap<(String, String), f64>,
}

impl RateCard {
    /// CSV with the header `country,category,price,currency,valid_from`; country `*` is the
    /// price for countries not listed.
    pub fn parse(text: &str) -> Result<RateCard, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let header = lines.next().ok_or("the rate card is empty")?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        if columns != ["country", "category", "price", "currency", "valid_from"] {
            return Err(format!(
                "the rate card header must be country,category,price,currency,valid_from; got {header}"
            ));
        }
        let mut card = RateCard::default();
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 5 {
                return Err(format!("rate card row {}: expected 5 columns", i + 2));
            }
            let price: f64 = f[2]
                .parse()
                .map_err(|_| format!("rate card row {}: price {:?}", i + 2, f[2]))?;
            if Category::parse(f[1]).is_none() {
                return Err(format!("rate card row {}: category {:?}", i + 2, f[1]));
            }
            card.currency = f[3].to_string();
            card.valid_from = f[4].to_string();
            card.prices
                .insert((f[0].to_ascii_uppercase(), f[1].to_string()), price);
        }
        Ok(card)
    }

    pub fn price(&self, country: &str, category: Category) -> Option<f64> {
        self.prices
            .get(&(country.to_string(), category.as_str().to_string()))
            .or_else(|| {
                self.prices
                    .get(&("*".to_string(), category.as_str().to_string()))
            })
            .copied()
    }
}

// -- lifecycle -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Launch,
    Pause,
    Resume,
    Cancel,
}

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    Draft,
    /// Launched with a start time still to come.
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl CampaignState {
    pub const ALL: [CampaignState; 6] = [
        CampaignState::Draft,
        CampaignState::Scheduled,
        CampaignState::Running,
        CampaignState::Paused,
        CampaignState::Completed,
        CampaignState::Cancelled,
    ];

    /// The stable code stored in PostgreSQL, mirrored to Redis and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Scheduled => "scheduled",
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<CampaignState> {
        CampaignState::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Nothing more will be sent.
    pub fn is_final(self) -> bool {
        matches!(self, CampaignState::Completed | CampaignState::Cancelled)
    }
}

impl std::fmt::Display for CampaignState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for CampaignState {
    type Error = String;
    fn try_from(raw: String) -> Result<CampaignState, String> {
        CampaignState::parse(&raw).ok_or_else(|| format!("unknown campaign state {raw}"))
    }
}

/// The state an action leads to, or why it is not allowed from `state`.
pub fn transition(state: CampaignState, action: Action) -> Result<CampaignState, String> {
    use CampaignState::*;
    match (state, action) {
        (Draft, Action::Launch) => Ok(Running),
        (Scheduled | Running, Action::Pause) => Ok(Paused),
        (Paused, Action::Resume) => Ok(Running),
        (Draft | Scheduled | Running | Paused, Action::Cancel) => Ok(Cancelled),
        (_, Action::Launch) => Err(format!("a {state} campaign cannot be launched again")),
        (_, Action::Pause) => Err(format!("a {state} campaign cannot be paused")),
        (_, Action::Resume) => Err(format!("a {state} campaign cannot be resumed")),
        (_, Action::Cancel) => Err(format!("a {state} campaign cannot be cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::ConsentAction;
    use chrono::TimeZone;

    fn components() -> Value {
        json!([
            {"type": "HEADER", "format": "TEXT", "text": "Hola {{1}}"},
            {"type": "BODY", "text": "{{1}}, tu cupón {{2}} vence el {{3}}. {{1}}!"},
            {"type": "BUTTONS", "buttons": [
                {"type": "QUICK_REPLY", "text": "Parar"},
                {"type": "URL", "text": "Ver", "url": "https://x.mx/c/{{1}}"}]}
        ])
    }

    #[test]
    fn slots_come_from_header_body_and_url_buttons() {
        assert_eq!(
            parameter_slots(&components()),
            vec!["header.1", "body.1", "body.2", "body.3", "button.1.1"]
        );
        let named = json!([{"type": "BODY", "text": "Hi {{first_name}} {{ city }}"}]);
        assert_eq!(
            parameter_slots(&named),
            vec!["body.first_name", "body.city"]
        );
        let image = json!([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "x"}]);
        assert!(parameter_slots(&image).is_empty());
    }

    fn attr(a: &str, default: Option<&str>) -> VariableSource {
        VariableSource {
            attribute: Some(a.into()),
            value: None,
            default: default.map(str::to_string),
        }
    }

    #[test]
    fn mappings_must_name_every_slot_once() {
        let slots = vec!["body.1".to_string(), "body.2".to_string()];
        let mut map = VariableMap::new();
        map.insert("body.1".into(), attr("name", None));
        assert!(matches!(
            validate_mapping(&slots, &map),
            Err(MappingError::CountMismatch {
                expected: 2,
                given: 1,
                ..
            })
        ));
        map.insert("body.3".into(), attr("x", None));
        assert_eq!(
            validate_mapping(&slots, &map),
            Err(MappingError::UnknownSlot("body.3".into()))
        );
        map.remove("body.3");
        map.insert(
            "body.2".into(),
            VariableSource {
                attribute: Some("a".into()),
                value: Some("b".into()),
                default: None,
            },
        );
        assert_eq!(
            validate_mapping(&slots, &map),
            Err(MappingError::NoSource("body.2".into()))
        );
        map.insert("body.2".into(), attr("coupon", None));
        assert_eq!(validate_mapping(&slots, &map), Ok(()));
    }

    #[test]
    fn renders_per_recipient_values_and_reports_the_missing_one() {
        let slots = parameter_slots(&components());
        let mut map = VariableMap::new();
        map.insert("header.1".into(), attr("name", Some("cliente")));
        map.insert("body.1".into(), attr("name", Some("cliente")));
        map.insert("body.2".into(), attr("coupon", None));
        map.insert(
            "body.3".into(),
            VariableSource {
                attribute: None,
                value: Some("31/12".into()),
                default: None,
            },
        );
        map.insert("button.1.1".into(), attr("coupon", None));
        let attributes = json!({"coupon": "ABC", "points": 3});
        let contact = ContactView {
            phone: "5215512345678",
            name: None,
            language: None,
            country: "MX",
            attributes: &attributes,
        };
        let rendered = render_components(&slots, &map, &contact).unwrap();
        assert_eq!(rendered[0]["parameters"][0]["text"], "cliente");
        assert_eq!(rendered[1]["parameters"][1]["text"], "ABC");
        assert_eq!(rendered[1]["parameters"][2]["text"], "31/12");
        assert_eq!(rendered[2]["index"], "1");
        assert_eq!(rendered[2]["parameters"][0]["text"], "ABC");
        let empty = json!({});
        let without = ContactView {
            attributes: &empty,
            ..contact
        };
        assert_eq!(
            render_components(&slots, &map, &without),
            Err("body.2".into())
        );
        let body = message_body("5215512345678", "promo", "es_MX", rendered);
        assert_eq!(body["template"]["language"]["code"], "es_MX");
        assert_eq!(body["template"]["components"][1]["type"], "body");
    }

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

    #[test]
    fn quiet_hours_wrap_midnight_in_local_time() {
        let quiet = QuietHours::parse("21:00", "09:00").unwrap();
        // 03:00 UTC is 21:00 in Mexico City (UTC-6): quiet for 12 h.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::from_secs(12 * 3600));
        // 15:00 UTC is 09:00 in Mexico City: free.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::ZERO);
        // 14:30:30 UTC is 08:30:30 local: 29.5 min left.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 14, 30, 30).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::from_secs(29 * 60 + 30));
        let day = QuietHours::parse("12:00", "13:00").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 12, 10, 0).unwrap();
        assert_eq!(day.wait(at, 0), Duration::from_secs(50 * 60));
        assert!(QuietHours::parse("25:00", "01:00").is_err());
        assert!(QuietHours::parse("09:00", "09:00").is_err());
    }

    #[test]
    fn recipients_stick_to_a_sender_and_spread_by_capacity() {
        let pool = vec![("a".to_string(), 1000.0), ("b".to_string(), 3000.0)];
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            let r = format!("5215500{i:06}");
            let first = pick_sender(&r, &pool).unwrap();
            assert_eq!(pick_sender(&r, &pool), Some(first));
            *counts.entry(first).or_insert(0) += 1;
        }
        let b = counts["b"] as f64 / 10_000.0;
        assert!((0.70..0.80).contains(&b), "b got {b}");
        // A sender with nothing left gets nobody.
        let full = vec![("a".to_string(), 0.0), ("b".to_string(), 5.0)];
        assert_eq!(pick_sender("5215512345678", &full), Some("b"));
    }

    #[test]
    fn eta_counts_throughput_rate_cap_and_tier_days() {
        let s = SenderCapacity {
            mps: 80,
            remaining: Some(1000),
            daily: Some(1000),
        };
        assert_eq!(eta(800, &[s], None), Duration::from_secs(10));
        assert_eq!(eta(800, &[s], Some(8)), Duration::from_secs(100));
        // 2,500 recipients on a 1K tier: today's 1,000 then two more days.
        assert_eq!(
            eta(2500, &[s], None),
            Duration::from_secs_f64(2500.0 / 80.0) + Duration::from_secs(2 * 86_400)
        );
        let unlimited = SenderCapacity {
            remaining: None,
            daily: None,
            ..s
        };
        assert_eq!(eta(8000, &[s, unlimited], None), Duration::from_secs(50));
    }

    #[test]
    fn rate_cards_parse_and_fall_back_to_the_default_country() {
        let card = RateCard::parse(
            "# example\ncountry,category,price,currency,valid_from\nMX,marketing,0.0436,USD,2026-10-01\n*,marketing,0.05,USD,2026-10-01\n",
        )
        .unwrap();
        assert_eq!(card.price("MX", Category::Marketing), Some(0.0436));
        assert_eq!(card.price("CO", Category::Marketing), Some(0.05));
        assert_eq!(card.price("CO", Category::Utility), None);
        assert_eq!(card.valid_from, "2026-10-01");
        assert!(RateCard::parse("a,b\n").is_err());
        assert!(
            RateCard::parse("country,category,price,currency,valid_from\nMX,marketing,x,USD,d")
                .is_err()
        );
    }

    #[test]
    fn campaigns_launch_once_and_move_only_forward() {
        use CampaignState::*;
        assert_eq!(transition(Draft, Action::Launch), Ok(Running));
        assert!(transition(Running, Action::Launch).is_err());
        assert!(transition(Completed, Action::Launch).is_err());
        assert_eq!(transition(Running, Action::Pause), Ok(Paused));
        assert_eq!(transition(Paused, Action::Resume), Ok(Running));
        assert!(transition(Running, Action::Resume).is_err());
        assert_eq!(transition(Paused, Action::Cancel), Ok(Cancelled));
        assert!(transition(Cancelled, Action::Cancel).is_err());
    }

    #[test]
    fn campaign_states_read_back_from_their_codes() {
        for state in CampaignState::ALL {
            assert_eq!(CampaignState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(CampaignState::try_from("done".to_string()).ok(), None);
    }
}
