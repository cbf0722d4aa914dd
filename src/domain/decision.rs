//! The send decision: given what Redis says about the sender, the template, the recipient's
//! consent and window, decide whether a message may go now.
//!
//! The same consent and window rules answer the enqueue-time check, so a message refused at
//! enqueue is refused for the same reason a worker would skip it.

use super::Category;
use super::DeliveryMode;
use super::campaign::CampaignState;
use super::reason::Reason;

/// A phone number's quality rating as Meta reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Green,
    Yellow,
    Red,
    /// Not rated yet (`NA`).
    NotAvailable,
    Unknown,
}

impl Quality {
    /// Meta's spellings, including the webhook's HIGH / MEDIUM / LOW.
    pub fn parse(raw: &str) -> Quality {
        match raw.to_ascii_uppercase().as_str() {
            "GREEN" | "HIGH" => Quality::Green,
            "YELLOW" | "MEDIUM" => Quality::Yellow,
            "RED" | "LOW" => Quality::Red,
            "NA" => Quality::NotAvailable,
            _ => Quality::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Green => "GREEN",
            Quality::Yellow => "YELLOW",
            Quality::Red => "RED",
            Quality::NotAvailable => "NA",
            Quality::Unknown => "UNKNOWN",
        }
    }

    /// The rating as a number that falls as quality drops (3 GREEN, 2 YELLOW, 1 RED, 0 not
    /// rated), for a gauge an alert can compare.
    pub fn level(&self) -> i64 {
        match self {
            Quality::Green => 3,
            Quality::Yellow => 2,
            Quality::Red => 1,
            Quality::NotAvailable | Quality::Unknown => 0,
        }
    }
}

/// A phone number's status as Meta reports it; only a CONNECTED number sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderStatus {
    Connected,
    Disconnected,
    Flagged,
    Restricted,
    Banned,
    /// Any other status Meta reports (PENDING, MIGRATED, …), kept as given.
    Other(String),
}

impl SenderStatus {
    pub fn parse(raw: &str) -> SenderStatus {
        match raw.to_ascii_uppercase().as_str() {
            "CONNECTED" => SenderStatus::Connected,
            "DISCONNECTED" => SenderStatus::Disconnected,
            "FLAGGED" => SenderStatus::Flagged,
            "RESTRICTED" => SenderStatus::Restricted,
            "BANNED" => SenderStatus::Banned,
            other => SenderStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            SenderStatus::Connected => "CONNECTED",
            SenderStatus::Disconnected => "DISCONNECTED",
            SenderStatus::Flagged => "FLAGGED",
            SenderStatus::Restricted => "RESTRICTED",
            SenderStatus::Banned => "BANNED",
            SenderStatus::Other(other) => other,
        }
    }
}

/// Stored and mirrored values read back as these enums, and serialise as Meta spells them.
macro_rules! meta_spelled {
    ($($t:ty),*) => {$(
        impl From<String> for $t {
            fn from(raw: String) -> $t {
                <$t>::parse(&raw)
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        /// A string as Meta spells it: values Meta adds later are kept as given, so the
        /// schema does not close the list.
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "description": "as Meta spells it"})
            }
        }
    )*};
}

meta_spelled!(Quality, SenderStatus, TemplateStatus);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentAction {
    OptIn,
    OptOut,
}

impl ConsentAction {
    pub fn parse(raw: &str) -> Option<ConsentAction> {
        match raw {
            "opt_in" | "in" => Some(ConsentAction::OptIn),
            "opt_out" | "out" => Some(ConsentAction::OptOut),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsentAction::OptIn => "opt_in",
            ConsentAction::OptOut => "opt_out",
        }
    }
}

/// The latest consent per purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consent {
    pub marketing: Option<ConsentAction>,
    pub utility: Option<ConsentAction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateStatus {
    Approved,
    Paused,
    Disabled,
    /// Any status that is not sendable and not a pause: PENDING, REJECTED, DELETED, …
    NotApproved(String),
    /// Not in the registry at all.
    Unknown,
}

impl TemplateStatus {
    pub fn parse(raw: &str) -> TemplateStatus {
        match raw.to_ascii_uppercase().as_str() {
            "APPROVED" | "REINSTATED" | "UNPAUSE" => TemplateStatus::Approved,
            "PAUSED" => TemplateStatus::Paused,
            "DISABLED" => TemplateStatus::Disabled,
            other => TemplateStatus::NotApproved(other.to_string()),
        }
    }

    /// Meta's spelling, as stored in the registry and mirrored to Redis; a status read from
    /// there reads back to the same value.
    pub fn as_str(&self) -> &str {
        match self {
            TemplateStatus::Approved => "APPROVED",
            TemplateStatus::Paused => "PAUSED",
            TemplateStatus::Disabled => "DISABLED",
            TemplateStatus::NotApproved(other) => other,
            TemplateStatus::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderState {
    /// Meta's status is CONNECTED.
    pub connected: bool,
    pub quality: Quality,
    /// Paused by pregon after an account-level error, or by an operator.
    pub paused: bool,
    /// Marketing held after a spam-rate answer (131048) until a moment that has not yet come.
    pub marketing_paused: bool,
}

impl SenderState {
    /// Why the sender may send nothing now: paused, or not CONNECTED (as far as Redis knows).
    pub fn unavailable(&self) -> Option<Reason> {
        (!self.connected || self.paused).then_some(Reason::SenderUnavailable)
    }

    /// Why the sender may send no marketing now: quality RED, or a spam-rate hold (131048).
    pub fn marketing_held(&self) -> Option<Reason> {
        if self.quality == Quality::Red {
            Some(Reason::SenderQualityRed)
        } else if self.marketing_paused {
            Some(Reason::MarketingPaused)
        } else {
            None
        }
    }

    /// Every hold on messages of `category`, most fundamental first: the lane holds of the send
    /// decision, and the causes of a campaign's auto-pause.
    pub fn holds(&self, category: Category) -> impl Iterator<Item = Reason> {
        let marketing = (category == Category::Marketing)
            .then(|| self.marketing_held())
            .flatten();
        self.unavailable().into_iter().chain(marketing)
    }
}

/// Everything the decision needs, read from Redis in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub sender: SenderState,
    pub template: Option<TemplateStatus>,
    pub consent: Consent,
    pub window_open: bool,
    /// Meta reported the recipient is not on WhatsApp (131026) and suppression is on.
    pub suppressed: bool,
    /// The wamid, if a previous delivery of this message was already accepted by Meta.
    pub sent_wamid: Option<String>,
    /// A previous delivery of this very attempt started its HTTP call and never reported back.
    pub claimed: bool,
    /// The state of the message's campaign, if it has one.
    pub campaign: CampaignGate,
    /// This message holds the probe of a paused template: it is sent to learn whether Meta still
    /// refuses the template (one message per recheck interval, not all of them).
    pub template_probe: bool,
    /// When Redis's copy of PostgreSQL's state was built (ms); `None` when Redis lost it (a restart
    /// without persistence). Until it is rebuilt nothing in this snapshot can be trusted: a
    /// missing consent, template or tier count would read as "none".
    pub copy_since_ms: Option<i64>,
}

/// What a campaign's state means for its messages in the lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CampaignGate {
    /// No campaign, or one that is running.
    #[default]
    Open,
    /// Paused: hand the message back to the campaign, to be queued again on resume.
    Paused,
    /// Cancelled or past its end-by time: the message is cancelled.
    Stopped,
    /// The message names a campaign whose state Redis does not hold: look it up, never guess.
    Unknown,
}

impl CampaignGate {
    /// From the campaign state mirrored in Redis; a missing state lets messages go (the
    /// campaign runner mirrors the state again within a second).
    pub fn from_state(state: Option<CampaignState>) -> CampaignGate {
        match state {
            Some(CampaignState::Paused) => CampaignGate::Paused,
            Some(s) if s.is_final() => CampaignGate::Stopped,
            Some(_) => CampaignGate::Open,
            None => CampaignGate::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub category: Category,
    pub free_form: bool,
    pub delivery: DeliveryMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    AlreadySent(String),
    Send {
        counts_against_tier: bool,
    },
    /// The recipient may not get this message: a final `skipped`.
    Skip(Reason),
    /// The message can never be sent as it is: a final `failed`, with detail for the error text.
    Fail {
        reason: Reason,
        detail: Option<String>,
    },
    /// Stop pulling from the lane for a while without touching the message.
    Hold(Reason),
    /// The template is paused: the message waits for it (`template_pause_recheck`), unless it is
    /// the one that may probe whether Meta still refuses it.
    TemplatePaused,
    /// The campaign is paused: give the message back to it, unsent.
    ReturnToCampaign,
    /// The campaign is cancelled: the message will not be sent.
    Cancel,
}

/// Consent and window rules, shared by enqueue and send.
///
/// An opt-out blocks everything but the recipient's own conversation: a free-form reply inside a
/// window they opened is always allowed.
pub fn consent_verdict(facts: &Facts, consent: &Consent, window_open: bool) -> Option<Reason> {
    if facts.free_form {
        return (!window_open).then_some(Reason::OutsideServiceWindow);
    }
    match facts.category {
        Category::Marketing => match consent.marketing {
            Some(ConsentAction::OptIn) => None,
            Some(ConsentAction::OptOut) => Some(Reason::RecipientOptedOut),
            None => Some(Reason::NoMarketingOptIn),
        },
        Category::Utility | Category::Authentication | Category::Service => {
            (consent.utility == Some(ConsentAction::OptOut)).then_some(Reason::RecipientOptedOut)
        }
    }
}

/// Suppression, then consent and window: whether this recipient may get this message at all.
/// A suppressed recipient who just wrote to us (an open window) is evidently reachable.
pub fn recipient_verdict(
    facts: &Facts,
    consent: &Consent,
    window_open: bool,
    suppressed: bool,
) -> Option<Reason> {
    if suppressed && !window_open {
        return Some(Reason::RecipientSuppressed);
    }
    consent_verdict(facts, consent, window_open)
}

fn fail(reason: Reason, detail: Option<String>) -> Decision {
    Decision::Fail { reason, detail }
}

pub fn decide(snapshot: &Snapshot, facts: &Facts) -> Decision {
    if snapshot.copy_since_ms.is_none() {
        return Decision::Hold(Reason::StateRebuilding);
    }
    if let Some(wamid) = &snapshot.sent_wamid {
        return Decision::AlreadySent(wamid.clone());
    }
    if snapshot.claimed && facts.delivery == DeliveryMode::AtMostOnce {
        return Decision::Fail {
            reason: Reason::SendOutcomeUnknown,
            detail: None,
        };
    }
    match snapshot.campaign {
        CampaignGate::Open => {}
        CampaignGate::Paused => return Decision::ReturnToCampaign,
        CampaignGate::Stopped => return Decision::Cancel,
        CampaignGate::Unknown => return Decision::Hold(Reason::StateUnavailable),
    }
    if let Some(reason) = snapshot.sender.unavailable() {
        return Decision::Hold(reason);
    }
    if let Some(skip) = recipient_verdict(
        facts,
        &snapshot.consent,
        snapshot.window_open,
        snapshot.suppressed,
    ) {
        return Decision::Skip(skip);
    }
    if let Some(status) = &snapshot.template {
        match status {
            TemplateStatus::Approved => {}
            TemplateStatus::Paused if snapshot.template_probe => {}
            TemplateStatus::Paused => return Decision::TemplatePaused,
            TemplateStatus::Disabled => return fail(Reason::TemplateDisabled, None),
            TemplateStatus::Unknown => return fail(Reason::TemplateUnknown, None),
            TemplateStatus::NotApproved(s) => {
                return fail(
                    Reason::TemplateNotApproved,
                    Some(format!("template status {s}")),
                );
            }
        }
    }
    if facts.category == Category::Marketing
        && let Some(reason) = snapshot.sender.marketing_held()
    {
        return Decision::Hold(reason);
    }
    Decision::Send {
        counts_against_tier: !snapshot.window_open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_levels_fall_as_quality_drops() {
        let cases = [
            ("GREEN", 3),
            ("HIGH", 3),
            ("YELLOW", 2),
            ("RED", 1),
            ("NA", 0),
            ("whatever", 0),
        ];
        for (spelling, level) in cases {
            assert_eq!(Quality::parse(spelling).level(), level, "{spelling}");
        }
    }

    fn healthy() -> Snapshot {
        Snapshot {
            sender: SenderState {
                connected: true,
                quality: Quality::Green,
                paused: false,
                marketing_paused: false,
            },
            template: Some(TemplateStatus::Approved),
            consent: Consent {
                marketing: Some(ConsentAction::OptIn),
                utility: None,
            },
            window_open: false,
            suppressed: false,
            sent_wamid: None,
            claimed: false,
            campaign: CampaignGate::Open,
            template_probe: false,
            copy_since_ms: Some(0),
        }
    }

    #[test]
    fn a_lost_copy_holds_whatever_it_seems_to_say() {
        // Redis came back empty: no consent, no template, no sent marker, no campaign. Every one
        // of those would read as a final answer; none may be given until the copy is rebuilt.
        let lost = Snapshot {
            sender: SenderState {
                connected: false,
                quality: Quality::Unknown,
                paused: false,
                marketing_paused: false,
            },
            template: Some(TemplateStatus::Unknown),
            consent: Consent::default(),
            window_open: false,
            suppressed: false,
            sent_wamid: None,
            claimed: false,
            campaign: CampaignGate::Unknown,
            template_probe: false,
            copy_since_ms: None,
        };
        for category in [Category::Marketing, Category::Utility] {
            for free_form in [false, true] {
                assert_eq!(
                    decide(&lost, &facts(category, free_form)),
                    Decision::Hold(Reason::StateRebuilding),
                    "{category:?} free_form={free_form}"
                );
            }
        }
        // With the copy whole, a campaign whose state is missing is looked up, not guessed.
        let mut s = healthy();
        s.campaign = CampaignGate::Unknown;
        assert_eq!(
            decide(&s, &facts(Category::Marketing, false)),
            Decision::Hold(Reason::StateUnavailable)
        );
    }

    #[test]
    fn a_paused_campaign_takes_its_messages_back_and_a_cancelled_one_drops_them() {
        let mut s = healthy();
        let f = facts(Category::Marketing, false);
        s.campaign = CampaignGate::Paused;
        assert_eq!(decide(&s, &f), Decision::ReturnToCampaign);
        s.campaign = CampaignGate::Stopped;
        assert_eq!(decide(&s, &f), Decision::Cancel);
        // What was already sent stays sent.
        s.sent_wamid = Some("wamid.1".into());
        assert_eq!(decide(&s, &f), Decision::AlreadySent("wamid.1".into()));
        assert_eq!(
            CampaignGate::from_state(Some(CampaignState::Paused)),
            CampaignGate::Paused
        );
        assert_eq!(
            CampaignGate::from_state(Some(CampaignState::Running)),
            CampaignGate::Open
        );
        assert_eq!(
            CampaignGate::from_state(Some(CampaignState::Completed)),
            CampaignGate::Stopped
        );
        // A missing state is not "running" (it used to be: a lost Redis reopened paused
        // campaigns); the worker reads the campaign's row instead.
        assert_eq!(CampaignGate::from_state(None), CampaignGate::Unknown);
    }

    #[test]
    fn suppressed_recipients_are_skipped_unless_they_just_wrote() {
        let mut s = healthy();
        s.suppressed = true;
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Skip(Reason::RecipientSuppressed)
        );
        s.window_open = true;
        assert!(matches!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Send { .. }
        ));
    }

    fn facts(category: Category, free_form: bool) -> Facts {
        Facts {
            category,
            free_form,
            delivery: DeliveryMode::AtMostOnce,
        }
    }

    const MARKETING: Facts = Facts {
        category: Category::Marketing,
        free_form: false,
        delivery: DeliveryMode::AtMostOnce,
    };

    #[test]
    fn marketing_needs_opt_in_and_respects_opt_out() {
        assert_eq!(
            decide(&healthy(), &MARKETING),
            Decision::Send {
                counts_against_tier: true
            }
        );
        let mut s = healthy();
        s.consent.marketing = None;
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Skip(Reason::NoMarketingOptIn)
        );
        s.consent.marketing = Some(ConsentAction::OptOut);
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Skip(Reason::RecipientOptedOut)
        );
    }

    #[test]
    fn opt_out_blocks_everything_but_the_recipients_own_conversation() {
        let mut s = healthy();
        s.consent = Consent {
            marketing: Some(ConsentAction::OptOut),
            utility: Some(ConsentAction::OptOut),
        };
        s.template = Some(TemplateStatus::Approved);
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Skip(Reason::RecipientOptedOut)
        );
        s.template = None;
        s.window_open = true;
        assert_eq!(
            decide(&s, &facts(Category::Service, true)),
            Decision::Send {
                counts_against_tier: false
            }
        );
    }

    #[test]
    fn free_form_needs_an_open_window() {
        let mut s = healthy();
        s.template = None;
        assert_eq!(
            decide(&s, &facts(Category::Service, true)),
            Decision::Skip(Reason::OutsideServiceWindow)
        );
    }

    #[test]
    fn in_window_templates_do_not_count_against_the_tier() {
        let mut s = healthy();
        s.window_open = true;
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Send {
                counts_against_tier: false
            }
        );
    }

    #[test]
    fn sender_health_holds_the_right_lanes() {
        let mut s = healthy();
        s.sender.quality = Quality::Red;
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Hold(Reason::SenderQualityRed)
        );
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Send {
                counts_against_tier: true
            }
        );
        s.sender.connected = false;
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Hold(Reason::SenderUnavailable)
        );
        let mut s = healthy();
        s.sender.marketing_paused = true;
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Hold(Reason::MarketingPaused)
        );
        // The same rule names a campaign's auto-pause causes.
        s.sender.quality = Quality::Red;
        s.sender.paused = true;
        assert_eq!(
            s.sender.holds(Category::Marketing).collect::<Vec<_>>(),
            [Reason::SenderUnavailable, Reason::SenderQualityRed]
        );
        assert_eq!(
            s.sender.holds(Category::Utility).collect::<Vec<_>>(),
            [Reason::SenderUnavailable]
        );
        assert_eq!(healthy().sender.holds(Category::Marketing).count(), 0);
    }

    #[test]
    fn sender_quality_and_status_read_back_from_what_is_stored() {
        for raw in ["GREEN", "YELLOW", "RED", "NA", "UNKNOWN"] {
            assert_eq!(Quality::parse(raw).as_str(), raw);
        }
        assert_eq!(Quality::parse("low"), Quality::Red);
        for raw in ["CONNECTED", "FLAGGED", "RESTRICTED", "BANNED", "PENDING"] {
            assert_eq!(SenderStatus::parse(raw).as_str(), raw);
        }
        assert_eq!(
            serde_json::to_value(SenderStatus::parse("connected")).unwrap(),
            "CONNECTED"
        );
    }

    #[test]
    fn template_statuses_read_back_from_what_is_stored() {
        for raw in [
            "APPROVED",
            "PAUSED",
            "DISABLED",
            "PENDING",
            "REJECTED",
            "IN_APPEAL",
        ] {
            assert_eq!(TemplateStatus::parse(raw).as_str(), raw);
        }
        assert_eq!(
            TemplateStatus::parse("reinstated"),
            TemplateStatus::Approved
        );
        assert_eq!(TemplateStatus::parse("paused").to_string(), "PAUSED");
    }

    #[test]
    fn template_status_decides() {
        let mut s = healthy();
        s.template = Some(TemplateStatus::Paused);
        assert_eq!(decide(&s, &MARKETING), Decision::TemplatePaused);
        s.template_probe = true;
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Send {
                counts_against_tier: true
            }
        );
        s.template_probe = false;
        s.template = Some(TemplateStatus::Disabled);
        assert_eq!(decide(&s, &MARKETING), fail(Reason::TemplateDisabled, None));
        s.template = Some(TemplateStatus::parse("REJECTED"));
        assert_eq!(
            decide(&s, &MARKETING),
            fail(
                Reason::TemplateNotApproved,
                Some("template status REJECTED".into())
            )
        );
        s.template = Some(TemplateStatus::Unknown);
        assert_eq!(decide(&s, &MARKETING), fail(Reason::TemplateUnknown, None));
    }

    #[test]
    fn redeliveries_never_send_twice_unless_asked() {
        let mut s = healthy();
        s.sent_wamid = Some("wamid.X".into());
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::AlreadySent("wamid.X".into())
        );
        let mut s = healthy();
        s.claimed = true;
        assert_eq!(
            decide(&s, &MARKETING),
            fail(Reason::SendOutcomeUnknown, None)
        );
        let at_least_once = Facts {
            delivery: DeliveryMode::AtLeastOnce,
            ..MARKETING
        };
        assert_eq!(
            decide(&s, &at_least_once),
            Decision::Send {
                counts_against_tier: true
            }
        );
    }
}
