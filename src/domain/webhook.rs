//! Meta's webhook payloads, read into the updates pregon acts on.
//!
//! Parsing is deliberately lenient below the envelope: Meta adds fields and update kinds without
//! notice, so anything pregon does not understand becomes [`Update::Unknown`] (stored and counted)
//! instead of an error. Only a body that is not a webhook envelope at all is refused.

use serde_json::Value;

use super::reason::Reason;
use super::tier::Tier;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a webhook envelope: {0}")]
    NotEnvelope(&'static str),
}

/// A delivery status Meta reports for a message pregon sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub phone_number_id: Option<String>,
    pub wamid: String,
    pub status: String,
    /// Seconds since the epoch, as Meta gives it.
    pub timestamp: i64,
    pub recipient: Option<String>,
    pub error_code: Option<i64>,
    pub error_title: Option<String>,
    pub pricing: Option<Value>,
    /// The send's `biz_opaque_callback_data` echoed back: pregon puts its message id there, so a
    /// send whose answer was lost can still be matched to its status.
    pub callback_data: Option<String>,
}

/// A message a customer wrote to one of the business's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    pub phone_number_id: String,
    pub wamid: String,
    pub from: String,
    pub timestamp: i64,
    pub kind: String,
    pub text: Option<String>,
    /// A quick-reply button's payload, or an interactive reply's id.
    pub payload: Option<String>,
    /// What the customer saw on the button or list row they chose.
    pub reply_title: Option<String>,
    pub context_wamid: Option<String>,
    /// A click-to-WhatsApp ad the conversation started from.
    pub referral: Option<Value>,
}

/// `phone_number_quality_update`: names the number by its display number, not its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberQualityUpdate {
    /// When Meta made the change: the entry's `time`, in seconds since the epoch. An update older
    /// than the state it would change is a replay or arrived out of order, and is not applied.
    pub at: Option<i64>,
    pub display_phone_number: String,
    pub event: String,
    pub limit: Option<Tier>,
}

/// `business_capability_update`: limits for the whole business account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityUpdate {
    /// When Meta made the change: the entry's `time`, in seconds since the epoch. An update older
    /// than the state it would change is a replay or arrived out of order, and is not applied.
    pub at: Option<i64>,
    pub waba_id: String,
    pub limit: Option<Tier>,
    pub max_phone_numbers: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUpdate {
    /// When Meta made the change: the entry's `time`, in seconds since the epoch. An update older
    /// than the state it would change is a replay or arrived out of order, and is not applied.
    pub at: Option<i64>,
    pub waba_id: String,
    pub event: String,
    pub phone_number: Option<String>,
    pub ban_state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateUpdate {
    /// When Meta made the change: the entry's `time`, in seconds since the epoch. An update older
    /// than the state it would change is a replay or arrived out of order, and is not applied.
    pub at: Option<i64>,
    pub template_id: Option<String>,
    pub name: String,
    pub language: String,
    pub kind: TemplateChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChange {
    /// `event` (APPROVED, PAUSED, DISABLED, REINSTATED, …) with Meta's reason and, for pauses, the
    /// `other_info.title` (FIRST_PAUSE, SECOND_PAUSE, UNPAUSE, DISABLED).
    Status {
        event: String,
        reason: Option<String>,
        title: Option<String>,
    },
    Quality {
        previous: Option<String>,
        new: String,
    },
    Category {
        previous: Option<String>,
        new: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Status(StatusUpdate),
    Inbound(InboundMessage),
    NumberQuality(NumberQualityUpdate),
    Capability(CapabilityUpdate),
    Account(AccountUpdate),
    Template(TemplateUpdate),
    /// Kept for inspection: a field pregon does not handle, or an item missing what it needs.
    Unknown {
        field: String,
        value: Value,
        why: String,
    },
}

/// Reads a webhook body into updates, in the order Meta listed them.
pub fn parse(body: &[u8]) -> Result<Vec<Update>, ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(ParseError::NotEnvelope("no \"entry\" array"))?;
    let mut updates = Vec::new();
    for entry in entries {
        let waba_id = text(entry.get("id")).unwrap_or_default();
        let at = number(entry.get("time"));
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            updates.push(unknown("entry", entry, "entry without a \"changes\" array"));
            continue;
        };
        for change in changes {
            let field = change
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let value = change.get("value").unwrap_or(&Value::Null);
            read_change(field, value, &waba_id, at, &mut updates);
        }
    }
    Ok(updates)
}

fn read_change(field: &str, value: &Value, waba_id: &str, at: Option<i64>, out: &mut Vec<Update>) {
    match field {
        "messages" => read_messages(value, out),
        "phone_number_quality_update" => out.push(
            match (
                text(value.get("display_phone_number")),
                text(value.get("event")),
            ) {
                (Some(display_phone_number), Some(event)) => {
                    Update::NumberQuality(NumberQualityUpdate {
                        at,
                        display_phone_number,
                        event,
                        limit: ["max_daily_conversations_per_business", "current_limit"]
                            .iter()
                            .find_map(|k| tier(value.get(*k))),
                    })
                }
                _ => unknown(field, value, "no display_phone_number or event"),
            },
        ),
        "business_capability_update" => out.push(Update::Capability(CapabilityUpdate {
            at,
            waba_id: waba_id.to_string(),
            limit: [
                "max_daily_conversations_per_business",
                "max_daily_conversation_per_phone_number",
            ]
            .iter()
            .find_map(|k| tier(value.get(*k))),
            max_phone_numbers: value
                .get("max_phone_numbers_per_business")
                .and_then(Value::as_i64),
        })),
        "account_update" => out.push(match text(value.get("event")) {
            Some(event) => Update::Account(AccountUpdate {
                at,
                waba_id: waba_id.to_string(),
                event,
                phone_number: text(value.get("phone_number")),
                ban_state: value
                    .get("ban_info")
                    .and_then(|b| text(b.get("waba_ban_state"))),
            }),
            None => unknown(field, value, "no event"),
        }),
        "message_template_status_update" => out.push(template(field, value, at, |v| {
            Some(TemplateChange::Status {
                event: text(v.get("event"))?,
                reason: text(v.get("reason")).filter(|r| r != "NONE"),
                title: v.get("other_info").and_then(|o| text(o.get("title"))),
            })
        })),
        "message_template_quality_update" => out.push(template(field, value, at, |v| {
            Some(TemplateChange::Quality {
                previous: text(v.get("previous_quality_score")),
                new: text(v.get("new_quality_score"))?,
            })
        })),
        "template_category_update" => out.push(template(field, value, at, |v| {
            Some(TemplateChange::Category {
                previous: text(v.get("previous_category")),
                new: text(v.get("new_category")).or_else(|| text(v.get("correct_category")))?,
            })
        })),
        _ => out.push(unknown(field, value, "update kind not handled")),
    }
}

fn read_messages(value: &Value, out: &mut Vec<Update>) {
    let phone_number_id = value
        .get("metadata")
        .and_then(|m| text(m.get("phone_number_id")));
    let mut known = false;
    if let Some(statuses) = value.get("statuses").and_then(Value::as_array) {
        known = true;
        for s in statuses {
            out.push(match status(s, phone_number_id.clone()) {
                Some(u) => Update::Status(u),
                None => unknown(
                    "messages.statuses",
                    s,
                    "status without id, status or timestamp",
                ),
            });
        }
    }
    if let Some(messages) = value.get("messages").and_then(Value::as_array) {
        known = true;
        for m in messages {
            out.push(match (&phone_number_id, inbound(m)) {
                (Some(id), Some(mut msg)) => {
                    msg.phone_number_id = id.clone();
                    Update::Inbound(msg)
                }
                (None, _) => unknown("messages.messages", m, "no metadata.phone_number_id"),
                (_, None) => unknown(
                    "messages.messages",
                    m,
                    "message without id, from or timestamp",
                ),
            });
        }
    }
    if !known {
        out.push(unknown("messages", value, "neither statuses nor messages"));
    }
}

fn status(s: &Value, phone_number_id: Option<String>) -> Option<StatusUpdate> {
    let error = s
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|e| e.first());
    Some(StatusUpdate {
        phone_number_id,
        wamid: text(s.get("id"))?,
        status: text(s.get("status"))?.to_ascii_lowercase(),
        timestamp: number(s.get("timestamp"))?,
        recipient: text(s.get("recipient_id")),
        error_code: error.and_then(|e| number(e.get("code"))),
        error_title: error.and_then(|e| text(e.get("title")).or_else(|| text(e.get("message")))),
        pricing: s.get("pricing").filter(|p| p.is_object()).cloned(),
        callback_data: text(s.get("biz_opaque_callback_data")),
    })
}

fn inbound(m: &Value) -> Option<InboundMessage> {
    let kind = text(m.get("type")).unwrap_or_else(|| "unknown".into());
    let (payload, reply_title) = match kind.as_str() {
        "button" => {
            let b = m.get("button");
            (
                b.and_then(|b| text(b.get("payload"))),
                b.and_then(|b| text(b.get("text"))),
            )
        }
        "interactive" => {
            let i = m.get("interactive");
            let reply = i
                .and_then(|i| i.get("button_reply").or_else(|| i.get("list_reply")))
                .filter(|r| r.is_object());
            (
                reply.and_then(|r| text(r.get("id"))),
                reply.and_then(|r| text(r.get("title"))),
            )
        }
        _ => (None, None),
    };
    Some(InboundMessage {
        phone_number_id: String::new(),
        wamid: text(m.get("id"))?,
        from: text(m.get("from"))?,
        timestamp: number(m.get("timestamp"))?,
        text: m.get("text").and_then(|t| text(t.get("body"))),
        payload,
        reply_title,
        context_wamid: m.get("context").and_then(|c| text(c.get("id"))),
        referral: m.get("referral").filter(|r| r.is_object()).cloned(),
        kind,
    })
}

fn template(
    field: &str,
    value: &Value,
    at: Option<i64>,
    change: impl Fn(&Value) -> Option<TemplateChange>,
) -> Update {
    let name = text(value.get("message_template_name"));
    let language = text(value.get("message_template_language"));
    match (name, language, change(value)) {
        (Some(name), Some(language), Some(kind)) => Update::Template(TemplateUpdate {
            at,
            template_id: text(value.get("message_template_id")),
            name,
            language,
            kind,
        }),
        _ => unknown(
            field,
            value,
            "template update without name, language or new value",
        ),
    }
}

fn unknown(field: &str, value: &Value, why: &str) -> Update {
    Update::Unknown {
        field: field.to_string(),
        value: value.clone(),
        why: why.to_string(),
    }
}

/// Strings and numbers alike as text: Meta sends ids and timestamps either way.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn tier(v: Option<&Value>) -> Option<Tier> {
    Tier::parse(&text(v)?).ok()
}

// ---------------------------------------------------------------------------------------------
// What updates mean

/// How Meta's reports about a number change what pregon may do with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderChange {
    pub quality: Option<String>,
    /// Meta's status of the number: CONNECTED, FLAGGED, RESTRICTED, BANNED, …
    pub status: Option<String>,
    pub tier: Option<Tier>,
    pub mps: Option<i32>,
    /// When Meta made the change (seconds since the epoch); None when pregon learned it itself.
    pub at: Option<i64>,
}

/// The throughput Meta grants after a THROUGHPUT_UPGRADE.
pub const UPGRADED_MPS: i32 = 1000;

pub fn number_quality_change(u: &NumberQualityUpdate) -> SenderChange {
    let mut change = SenderChange {
        tier: u.limit,
        at: u.at,
        ..SenderChange::default()
    };
    match u.event.to_ascii_uppercase().as_str() {
        "FLAGGED" => change.quality = Some("RED".into()),
        "UNFLAGGED" => change.quality = Some("GREEN".into()),
        "THROUGHPUT_UPGRADE" => change.mps = Some(UPGRADED_MPS),
        _ => {}
    }
    change
}

/// An `account_update` that stops or restores every number of the account.
pub fn account_status(u: &AccountUpdate) -> Option<&'static str> {
    let ban = u.ban_state.as_deref().map(str::to_ascii_uppercase);
    match (u.event.to_ascii_uppercase().as_str(), ban.as_deref()) {
        (_, Some("DISABLE")) => Some("BANNED"),
        (_, Some("SCHEDULE_FOR_DISABLE")) => None,
        (_, Some("REINSTATE")) => Some("CONNECTED"),
        ("ACCOUNT_RESTRICTION", _) => Some("RESTRICTED"),
        ("ACCOUNT_DELETED", _) => Some("DELETED"),
        _ => None,
    }
}

/// The registry status a template status event leaves behind.
pub fn template_status(event: &str, title: Option<&str>) -> String {
    match (
        event.to_ascii_uppercase().as_str(),
        title.map(str::to_ascii_uppercase),
    ) {
        (_, Some(t)) if t == "UNPAUSE" => "APPROVED".into(),
        ("REINSTATED" | "UNPAUSED" | "UNPAUSE", _) => "APPROVED".into(),
        (other, _) => other.to_string(),
    }
}

/// What a `failed` status means beyond the failure itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedStatus {
    /// Record the failure with this reason.
    Fail(Reason),
    /// 131026: fail, and suppress the recipient when configured.
    Unreachable,
    /// 131050: fail, and record a marketing opt-out.
    StoppedMarketing,
    /// 131049: the per-user marketing cap; try again no earlier than 24 h later.
    RetryAfterCap,
}

pub fn failed_status(code: Option<i64>) -> FailedStatus {
    match code {
        Some(131026) => FailedStatus::Unreachable,
        Some(131050) => FailedStatus::StoppedMarketing,
        Some(131049) => FailedStatus::RetryAfterCap,
        Some(131047) => FailedStatus::Fail(Reason::OutsideServiceWindow),
        Some(132015) => FailedStatus::Fail(Reason::TemplatePaused),
        Some(132016) => FailedStatus::Fail(Reason::TemplateDisabled),
        Some(130472) => FailedStatus::Fail(Reason::ExperimentHoldout),
        _ => FailedStatus::Fail(Reason::Undelivered),
    }
}

impl FailedStatus {
    pub fn reason(self) -> Reason {
        match self {
            FailedStatus::Fail(r) => r,
            FailedStatus::Unreachable => Reason::RecipientUnreachable,
            FailedStatus::StoppedMarketing => Reason::RecipientStoppedMarketing,
            FailedStatus::RetryAfterCap => Reason::RecipientMarketingCap,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Opt-out keywords

/// How long a customer's message opens the service window: 24 h, or 72 h when they came from a
/// click-to-WhatsApp ad (Meta's free entry point).
pub const SERVICE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
pub const REFERRAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(72 * 3600);

/// The window an inbound message opens.
pub fn window_after_inbound(from_ad: bool) -> std::time::Duration {
    if from_ad {
        REFERRAL_WINDOW
    } else {
        SERVICE_WINDOW
    }
}

pub const DEFAULT_OPT_OUT_KEYWORDS: &str = "STOP,BAJA,ALTO,CANCELAR,UNSUBSCRIBE,PARAR,SAIR";

/// Upper case without accents or surrounding punctuation, so "  Báj́a! " and "BAJA" compare equal.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if let Some(base) = strip_accent(c) {
            out.push(base);
        } else if is_combining_mark(c) {
            continue;
        } else {
            out.extend(c.to_uppercase());
        }
    }
    out.trim_matches(|c: char| !c.is_alphanumeric()).to_string()
}

fn is_combining_mark(c: char) -> bool {
    ('\u{0300}'..='\u{036F}').contains(&c)
}

fn strip_accent(c: char) -> Option<char> {
    let base = match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' | 'å' | 'Á' | 'À' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => 'E',
        'í' | 'ì' | 'î' | 'ï' | 'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' | 'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ú' | 'ù' | 'û' | 'ü' | 'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
        'ñ' | 'Ñ' => 'N',
        'ç' | 'Ç' => 'C',
        _ => return None,
    };
    Some(base)
}

/// Keywords from a comma-separated setting, folded once.
pub fn opt_out_keywords(raw: &str) -> Vec<String> {
    raw.split(',').map(fold).filter(|k| !k.is_empty()).collect()
}

/// Whether an inbound message asks to stop: its whole text, button payload or button title is
/// one of the keywords. "Stop sending me the wrong size" is a conversation, not an opt-out.
pub fn is_opt_out(message: &InboundMessage, keywords: &[String]) -> bool {
    [&message.text, &message.payload, &message.reply_title]
        .into_iter()
        .flatten()
        .any(|t| {
            let folded = fold(t);
            keywords.contains(&folded)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(field: &str, value: Value) -> Vec<u8> {
        json!({"object": "whatsapp_business_account",
               "entry": [{"id": "WABA1", "changes": [{"field": field, "value": value}]}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        assert!(matches!(parse(b"{nope"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse(b"[1,2]"), Err(ParseError::NotEnvelope(_))));
        assert!(matches!(
            parse(b"{\"object\":1}"),
            Err(ParseError::NotEnvelope(_))
        ));
        assert_eq!(parse(b"{\"entry\":[]}"), Ok(vec![]));
    }

    #[test]
    fn reads_statuses_with_errors_and_pricing() {
        let body = envelope(
            "messages",
            json!({"metadata": {"phone_number_id": "PN1"}, "statuses": [
                {"id": "wamid.1", "status": "delivered", "timestamp": "1700000000", "recipient_id": "5215512345678",
                 "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}},
                {"id": "wamid.2", "status": "failed", "timestamp": 1700000001,
                 "errors": [{"code": 131026, "title": "Message undeliverable"}]},
                {"id": "wamid.3"}
            ]}),
        );
        let updates = parse(&body).unwrap();
        assert_eq!(updates.len(), 3);
        let Update::Status(d) = &updates[0] else {
            panic!()
        };
        assert_eq!(d.status, "delivered");
        assert_eq!(d.timestamp, 1_700_000_000);
        assert_eq!(d.phone_number_id.as_deref(), Some("PN1"));
        assert_eq!(d.pricing.as_ref().unwrap()["type"], "regular");
        let Update::Status(f) = &updates[1] else {
            panic!()
        };
        assert_eq!(f.error_code, Some(131026));
        assert_eq!(failed_status(f.error_code), FailedStatus::Unreachable);
        assert!(matches!(&updates[2], Update::Unknown { .. }));
    }

    #[test]
    fn reads_inbound_text_buttons_replies_and_referrals() {
        let body = envelope(
            "messages",
            json!({"metadata": {"phone_number_id": "PN1"},
                   "contacts": [{"wa_id": "5215512345678", "profile": {"name": "Ana"}}],
                   "messages": [
                {"from": "5215512345678", "id": "wamid.in1", "timestamp": "1700000000", "type": "text",
                 "text": {"body": "hola"}, "referral": {"source_type": "ad", "ctwa_clid": "abc"}},
                {"from": "5215512345678", "id": "wamid.in2", "timestamp": "1700000001", "type": "button",
                 "button": {"payload": "STOP", "text": "Dejar de recibir"}, "context": {"from": "PN", "id": "wamid.out"}},
                {"from": "5215512345678", "id": "wamid.in3", "timestamp": "1700000002", "type": "interactive",
                 "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Sí"}}}
            ]}),
        );
        let updates = parse(&body).unwrap();
        let Update::Inbound(text) = &updates[0] else {
            panic!()
        };
        assert_eq!(text.text.as_deref(), Some("hola"));
        assert!(text.referral.is_some());
        let Update::Inbound(button) = &updates[1] else {
            panic!()
        };
        assert_eq!(button.payload.as_deref(), Some("STOP"));
        assert_eq!(button.context_wamid.as_deref(), Some("wamid.out"));
        let Update::Inbound(reply) = &updates[2] else {
            panic!()
        };
        assert_eq!(reply.payload.as_deref(), Some("yes"));
        assert_eq!(reply.reply_title.as_deref(), Some("Sí"));
    }

    #[test]
    fn reads_number_quality_and_capability_limits_in_every_spelling() {
        let u = parse(&envelope(
            "phone_number_quality_update",
            json!({"display_phone_number": "15550001111", "event": "UPGRADE",
                   "max_daily_conversations_per_business": "TIER_2K"}),
        ))
        .unwrap();
        let Update::NumberQuality(q) = &u[0] else {
            panic!()
        };
        assert_eq!(q.limit, Some(Tier::Limited(2000)));
        let old = parse(&envelope(
            "phone_number_quality_update",
            json!({"display_phone_number": "15550001111", "event": "FLAGGED", "current_limit": "TIER_1K"}),
        ))
        .unwrap();
        let Update::NumberQuality(q) = &old[0] else {
            panic!()
        };
        assert_eq!(number_quality_change(q).quality.as_deref(), Some("RED"));
        assert_eq!(q.limit, Some(Tier::Limited(1000)));
        for (raw, want) in [
            (json!(2000), Tier::Limited(2000)),
            (json!(-1), Tier::Unlimited),
            (json!("TIER_UNLIMITED"), Tier::Unlimited),
        ] {
            let u = parse(&envelope(
                "business_capability_update",
                json!({"max_daily_conversations_per_business": raw}),
            ))
            .unwrap();
            let Update::Capability(c) = &u[0] else {
                panic!()
            };
            assert_eq!(c.limit, Some(want));
            assert_eq!(c.waba_id, "WABA1");
        }
    }

    #[test]
    fn reads_template_updates() {
        let u = parse(&envelope(
            "message_template_status_update",
            json!({"event": "PAUSED", "message_template_id": 123, "message_template_name": "promo",
                   "message_template_language": "es_MX", "reason": "NONE",
                   "other_info": {"title": "FIRST_PAUSE", "description": "low quality"}}),
        ))
        .unwrap();
        let Update::Template(t) = &u[0] else { panic!() };
        assert_eq!(t.template_id.as_deref(), Some("123"));
        assert_eq!(
            t.kind,
            TemplateChange::Status {
                event: "PAUSED".into(),
                reason: None,
                title: Some("FIRST_PAUSE".into())
            }
        );
        assert_eq!(template_status("PAUSED", Some("FIRST_PAUSE")), "PAUSED");
        assert_eq!(template_status("APPROVED", Some("UNPAUSE")), "APPROVED");
        assert_eq!(template_status("REINSTATED", None), "APPROVED");
        let c = parse(&envelope(
            "template_category_update",
            json!({"message_template_id": 1, "message_template_name": "promo", "message_template_language": "es_MX",
                   "previous_category": "UTILITY", "new_category": "MARKETING"}),
        ))
        .unwrap();
        let Update::Template(t) = &c[0] else { panic!() };
        assert_eq!(
            t.kind,
            TemplateChange::Category {
                previous: Some("UTILITY".into()),
                new: "MARKETING".into()
            }
        );
    }

    #[test]
    fn updates_carry_when_meta_made_them() {
        let value = json!({"event": "PAUSED", "message_template_name": "promo",
                           "message_template_language": "es_MX"});
        for (time, at) in [
            (json!(1_700_000_000), Some(1_700_000_000)),
            (json!("1700000001"), Some(1_700_000_001)),
            (json!("yesterday"), None),
            (Value::Null, None),
        ] {
            let body = json!({"object": "whatsapp_business_account",
                "entry": [{"id": "WABA1", "time": time, "changes": [
                    {"field": "message_template_status_update", "value": value},
                    {"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION"}},
                    {"field": "business_capability_update", "value": {"max_daily_conversations_per_business": 1000}},
                    {"field": "phone_number_quality_update", "value": {"display_phone_number": "15550001", "event": "FLAGGED"}}]}]});
            let updates = parse(body.to_string().as_bytes()).unwrap();
            let ats: Vec<Option<i64>> = updates
                .iter()
                .map(|u| match u {
                    Update::Template(t) => t.at,
                    Update::Account(a) => a.at,
                    Update::Capability(c) => c.at,
                    Update::NumberQuality(n) => number_quality_change(n).at,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(ats, vec![at; 4], "{time}");
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_kept_not_fatal() {
        let u = parse(&envelope("security", json!({"x": 1}))).unwrap();
        assert!(matches!(&u[0], Update::Unknown { field, .. } if field == "security"));
        let u = parse(&envelope(
            "messages",
            json!({"metadata": {"phone_number_id": "PN1"}, "brand_new": []}),
        ))
        .unwrap();
        assert!(matches!(&u[0], Update::Unknown { .. }));
    }

    #[test]
    fn account_updates_stop_and_restore_numbers() {
        let acc = |event: &str, ban: Option<&str>| AccountUpdate {
            at: None,
            waba_id: "W".into(),
            event: event.into(),
            phone_number: None,
            ban_state: ban.map(str::to_string),
        };
        assert_eq!(
            account_status(&acc("DISABLED_UPDATE", Some("DISABLE"))),
            Some("BANNED")
        );
        assert_eq!(
            account_status(&acc("DISABLED_UPDATE", Some("REINSTATE"))),
            Some("CONNECTED")
        );
        assert_eq!(
            account_status(&acc("ACCOUNT_RESTRICTION", None)),
            Some("RESTRICTED")
        );
        assert_eq!(account_status(&acc("ACCOUNT_VIOLATION", None)), None);
    }

    #[test]
    fn opt_out_keywords_ignore_case_accents_and_punctuation() {
        let keywords = opt_out_keywords(DEFAULT_OPT_OUT_KEYWORDS);
        let msg = |t: &str| InboundMessage {
            phone_number_id: "PN".into(),
            wamid: "w".into(),
            from: "1".into(),
            timestamp: 0,
            kind: "text".into(),
            text: Some(t.into()),
            payload: None,
            reply_title: None,
            context_wamid: None,
            referral: None,
        };
        for yes in [
            "STOP", "stop", " Stop! ", "baja", "Bája", "PARAR.", "sair", "Cancelar",
        ] {
            assert!(is_opt_out(&msg(yes), &keywords), "{yes}");
        }
        for no in ["stop sending the wrong size", "hola", "", "STOPP"] {
            assert!(!is_opt_out(&msg(no), &keywords), "{no}");
        }
        // A combining accent (e + U+0301) folds like a precomposed one.
        assert_eq!(fold("Bája"), "BAJA");
        assert_eq!(fold("Ba\u{301}ja"), "BAJA");
        let custom = opt_out_keywords("desuscribir, no más");
        assert!(is_opt_out(&msg("NO MAS"), &custom));
    }

    #[test]
    fn failed_codes_have_their_meaning() {
        assert_eq!(failed_status(Some(131050)), FailedStatus::StoppedMarketing);
        assert_eq!(failed_status(Some(131049)), FailedStatus::RetryAfterCap);
        assert_eq!(
            failed_status(Some(131047)).reason().code(),
            "outside_customer_service_window"
        );
        assert_eq!(failed_status(None).reason().code(), "undelivered");
    }
}

/// The webhook parser reads bytes from the internet: whatever arrives, it must answer, not panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "object",
        "entry",
        "id",
        "changes",
        "field",
        "value",
        "metadata",
        "phone_number_id",
        "statuses",
        "messages",
        "status",
        "timestamp",
        "recipient_id",
        "errors",
        "code",
        "pricing",
        "from",
        "type",
        "text",
        "body",
        "button",
        "payload",
        "interactive",
        "button_reply",
        "list_reply",
        "title",
        "context",
        "referral",
        "event",
        "display_phone_number",
        "max_daily_conversations_per_business",
        "current_limit",
        "message_template_name",
        "message_template_language",
        "new_quality_score",
        "new_category",
        "other_info",
        "ban_info",
        "waba_ban_state",
    ];
    const FIELDS: &[&str] = &[
        "messages",
        "phone_number_quality_update",
        "business_capability_update",
        "account_update",
        "message_template_status_update",
        "message_template_quality_update",
        "template_category_update",
        "other",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            proptest::sample::select(FIELDS).prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |pairs| Value::Object(
                        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )
                ),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_json_shaped_like_webhooks_never_panics(
            field in proptest::sample::select(FIELDS),
            value in json_value(),
        ) {
            let body = serde_json::to_vec(&value).unwrap();
            let _ = parse(&body);
            let wrapped = serde_json::json!({"entry": [{"id": "W", "changes": [
                {"field": field, "value": value.clone()}, value,
            ]}]});
            if let Ok(updates) = parse(wrapped.to_string().as_bytes()) {
                for u in updates {
                    if let Update::Inbound(m) = &u {
                        let _ = is_opt_out(m, &opt_out_keywords(DEFAULT_OPT_OUT_KEYWORDS));
                    }
                }
            }
        }

        #[test]
        fn fold_never_panics(text in ".{0,64}") {
            let _ = fold(&text);
        }
    }
}
