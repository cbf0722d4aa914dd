//! The send decision: given what Redis says about the sender, the template, the recipient's
//! consent and window, decide whether a message may go now.
//!
//! The same consent and window rules answer the enqueue-time check, so a message refused at
//! enqueue is refused for the same reason a worker would skip it.

use std::time::Duration;

use super::Category;
use super::DeliveryMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Green,
    Yellow,
    Red,
    Unknown,
}

impl Quality {
    pub fn parse(raw: &str) -> Quality {
        match raw.to_ascii_uppercase().as_str() {
            "GREEN" | "HIGH" => Quality::Green,
            "YELLOW" | "MEDIUM" => Quality::Yellow,
            "RED" | "LOW" => Quality::Red,
            _ => Quality::Unknown,
        }
    }
}

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
}

impl CampaignGate {
    /// From the campaign state mirrored in Redis; an unknown or missing state lets messages go
    /// (the campaign runner mirrors the state again within a second).
    pub fn from_state(state: Option<&str>) -> CampaignGate {
        match state {
            Some("paused") => CampaignGate::Paused,
            Some("cancelled" | "completed") => CampaignGate::Stopped,
            _ => CampaignGate::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub category: Category,
    pub free_form: bool,
    pub delivery: DeliveryMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Suppressed,
    OptedOut,
    NoMarketingOptIn,
    OutsideServiceWindow,
}

impl SkipReason {
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::Suppressed => "recipient_suppressed",
            SkipReason::OptedOut => "recipient_opted_out",
            SkipReason::NoMarketingOptIn => "no_marketing_opt_in",
            SkipReason::OutsideServiceWindow => "outside_customer_service_window",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            SkipReason::Suppressed => {
                "Meta reported this number is not on WhatsApp (131026); it is suppressed"
            }
            SkipReason::OptedOut => "the recipient opted out of this kind of message",
            SkipReason::NoMarketingOptIn => {
                "marketing messages need a recorded opt-in from the recipient"
            }
            SkipReason::OutsideServiceWindow => {
                "free-form messages need an open 24 h customer-service window; send a template"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The process died during the HTTP call and the caller asked for at-most-once.
    OutcomeUnknown,
    TemplateUnknown,
    TemplateDisabled,
    TemplateNotApproved(String),
}

impl FailReason {
    pub fn code(&self) -> &'static str {
        match self {
            FailReason::OutcomeUnknown => "send_outcome_unknown",
            FailReason::TemplateUnknown => "unknown_template",
            FailReason::TemplateDisabled => "template_disabled",
            FailReason::TemplateNotApproved(_) => "template_not_approved",
        }
    }
}

/// Reasons to stop pulling from a lane for a while without touching the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    SenderUnavailable,
    QualityRed,
    MarketingPaused,
}

impl HoldReason {
    pub fn code(self) -> &'static str {
        match self {
            HoldReason::SenderUnavailable => "sender_unavailable",
            HoldReason::QualityRed => "sender_quality_red",
            HoldReason::MarketingPaused => "marketing_paused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferReason {
    TemplatePaused,
    TierExhausted,
    RecipientMarketingCap,
    PairRate,
}

impl DeferReason {
    pub fn code(self) -> &'static str {
        match self {
            DeferReason::TemplatePaused => "template_paused",
            DeferReason::TierExhausted => "messaging_limit_reached",
            DeferReason::RecipientMarketingCap => "recipient_marketing_cap",
            DeferReason::PairRate => "pair_rate",
        }
    }
}

/// How long a paused template's messages wait before they are looked at again.
pub const TEMPLATE_PAUSE_RECHECK: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    AlreadySent(String),
    Send {
        counts_against_tier: bool,
    },
    Skip(SkipReason),
    Fail(FailReason),
    Hold(HoldReason),
    Defer(DeferReason, Duration),
    /// The campaign is paused: give the message back to it, unsent.
    ReturnToCampaign,
    /// The campaign is cancelled: the message will not be sent.
    Cancel,
}

/// Consent and window rules, shared by enqueue and send.
///
/// An opt-out blocks everything but the recipient's own conversation: a free-form reply inside a
/// window they opened is always allowed.
pub fn consent_verdict(facts: &Facts, consent: &Consent, window_open: bool) -> Option<SkipReason> {
    if facts.free_form {
        return (!window_open).then_some(SkipReason::OutsideServiceWindow);
    }
    match facts.category {
        Category::Marketing => match consent.marketing {
            Some(ConsentAction::OptIn) => None,
            Some(ConsentAction::OptOut) => Some(SkipReason::OptedOut),
            None => Some(SkipReason::NoMarketingOptIn),
        },
        Category::Utility | Category::Authentication | Category::Service => {
            (consent.utility == Some(ConsentAction::OptOut)).then_some(SkipReason::OptedOut)
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
) -> Option<SkipReason> {
    if suppressed && !window_open {
        return Some(SkipReason::Suppressed);
    }
    consent_verdict(facts, consent, window_open)
}

pub fn decide(snapshot: &Snapshot, facts: &Facts) -> Decision {
    if let Some(wamid) = &snapshot.sent_wamid {
        return Decision::AlreadySent(wamid.clone());
    }
    if snapshot.claimed && facts.delivery == DeliveryMode::AtMostOnce {
        return Decision::Fail(FailReason::OutcomeUnknown);
    }
    match snapshot.campaign {
        CampaignGate::Open => {}
        CampaignGate::Paused => return Decision::ReturnToCampaign,
        CampaignGate::Stopped => return Decision::Cancel,
    }
    if !snapshot.sender.connected || snapshot.sender.paused {
        return Decision::Hold(HoldReason::SenderUnavailable);
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
            TemplateStatus::Paused => {
                return Decision::Defer(DeferReason::TemplatePaused, TEMPLATE_PAUSE_RECHECK);
            }
            TemplateStatus::Disabled => return Decision::Fail(FailReason::TemplateDisabled),
            TemplateStatus::Unknown => return Decision::Fail(FailReason::TemplateUnknown),
            TemplateStatus::NotApproved(s) => {
                return Decision::Fail(FailReason::TemplateNotApproved(s.clone()));
            }
        }
    }
    if facts.category == Category::Marketing {
        if snapshot.sender.quality == Quality::Red {
            return Decision::Hold(HoldReason::QualityRed);
        }
        if snapshot.sender.marketing_paused {
            return Decision::Hold(HoldReason::MarketingPaused);
        }
    }
    Decision::Send {
        counts_against_tier: !snapshot.window_open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
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
            CampaignGate::from_state(Some("paused")),
            CampaignGate::Paused
        );
        assert_eq!(
            CampaignGate::from_state(Some("running")),
            CampaignGate::Open
        );
        assert_eq!(CampaignGate::from_state(None), CampaignGate::Open);
    }

    #[test]
    fn suppressed_recipients_are_skipped_unless_they_just_wrote() {
        let mut s = healthy();
        s.suppressed = true;
        assert_eq!(
            decide(&s, &facts(Category::Utility, false)),
            Decision::Skip(SkipReason::Suppressed)
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
            Decision::Skip(SkipReason::NoMarketingOptIn)
        );
        s.consent.marketing = Some(ConsentAction::OptOut);
        assert_eq!(decide(&s, &MARKETING), Decision::Skip(SkipReason::OptedOut));
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
            Decision::Skip(SkipReason::OptedOut)
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
            Decision::Skip(SkipReason::OutsideServiceWindow)
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
            Decision::Hold(HoldReason::QualityRed)
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
            Decision::Hold(HoldReason::SenderUnavailable)
        );
        let mut s = healthy();
        s.sender.marketing_paused = true;
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Hold(HoldReason::MarketingPaused)
        );
    }

    #[test]
    fn template_status_decides() {
        let mut s = healthy();
        s.template = Some(TemplateStatus::Paused);
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Defer(DeferReason::TemplatePaused, TEMPLATE_PAUSE_RECHECK)
        );
        s.template = Some(TemplateStatus::Disabled);
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Fail(FailReason::TemplateDisabled)
        );
        s.template = Some(TemplateStatus::parse("REJECTED"));
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Fail(FailReason::TemplateNotApproved("REJECTED".into()))
        );
        s.template = Some(TemplateStatus::Unknown);
        assert_eq!(
            decide(&s, &MARKETING),
            Decision::Fail(FailReason::TemplateUnknown)
        );
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
            Decision::Fail(FailReason::OutcomeUnknown)
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
