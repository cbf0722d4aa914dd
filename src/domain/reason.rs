//! Why a message is where it is: every reason pregon records on a message (`status_reason`),
//! answers a refused request with, or counts in a metric, with its stable code.
//!
//! One table, so a reason cannot be spelled two ways: the decision, the post-send policy, the
//! webhook processor, campaigns, retry-failed and the reports all name reasons through this enum,
//! and stored codes are read back with [`Reason::parse`].

/// A reason with a stable machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // -- the recipient may not get this message (skipped at send, refused at enqueue)
    /// Meta reported the number is not on WhatsApp (131026) and suppression is on.
    RecipientSuppressed,
    /// The recipient opted out of this kind of message.
    RecipientOptedOut,
    /// Marketing without a recorded opt-in.
    NoMarketingOptIn,
    /// A free-form message with no open 24 h customer-service window (also Meta's 131047).
    OutsideServiceWindow,

    // -- the send decision failed the message
    /// A previous delivery of this attempt started its HTTP call and never reported back.
    SendOutcomeUnknown,
    /// The template is not in the registry.
    TemplateUnknown,
    /// The template is DISABLED (also Meta's 132016).
    TemplateDisabled,
    /// The template is PENDING, REJECTED, DELETED, … (its status goes in the error text).
    TemplateNotApproved,

    // -- waiting (deferred, or queued again for a retry)
    /// The template is PAUSED (also Meta's 132015): its messages wait for it.
    TemplatePaused,
    /// The sender's messaging limit (unique recipients per moving 24 h) is used up.
    MessagingLimitReached,
    /// Meta's per-user marketing cap (131049): no more marketing to this person today.
    RecipientMarketingCap,
    /// Too many messages to one recipient from one number: spaced out.
    PairRate,
    /// The campaign's quiet hours in the recipient's time zone.
    QuietHours,
    /// A transient failure: tried again after a backoff.
    Retrying,
    /// A throughput answer (130429, 131056): tried again after slowing down.
    Throttled,

    // -- the Cloud API (or the dispatcher) failed the message for good
    /// The transient-failure budget (`max_attempts`) is spent.
    AttemptsExhausted,
    /// The throttle budget (`max_throttles`) is spent.
    ThrottledTooOften,
    /// Processes kept dying with this message in hand.
    RedeliveredTooOften,
    /// Meta: the number is not on WhatsApp (131026).
    RecipientUnreachable,
    /// Meta: the recipient stopped marketing from this business (131050).
    RecipientStoppedMarketing,
    /// Meta refused the message as it is (bad parameters, unsupported type, …).
    RejectedByCloudApi,
    /// Meta held the message back for an experiment (130472).
    ExperimentHoldout,
    /// A `failed` status webhook with no more specific meaning.
    Undelivered,
    /// The message could not be handed to RabbitMQ when it was accepted.
    EnqueuePublishFailed,

    // -- campaigns
    /// The campaign was paused: the message went back to it unsent.
    CampaignPaused,
    /// The campaign was cancelled.
    CampaignCancelled,
    /// The campaign reached its end-by time.
    CampaignEndBy,
    /// An operator asked to retry the campaign's failures.
    RetryRequested,

    // -- lane holds (metrics only: the message stays in hand)
    /// The sender is paused or not CONNECTED.
    SenderUnavailable,
    /// The sender's quality is RED (marketing only).
    SenderQualityRed,
    /// Marketing on the sender is held after a spam-rate answer (131048).
    MarketingPaused,
    /// Redis could not be read.
    StateUnavailable,
    /// Redis lost its data; its copy of PostgreSQL's state is being rebuilt.
    StateRebuilding,
    /// PostgreSQL cannot record outcomes: nothing is sent until it can.
    StoreUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 34] = [
        Reason::RecipientSuppressed,
        Reason::RecipientOptedOut,
        Reason::NoMarketingOptIn,
        Reason::OutsideServiceWindow,
        Reason::SendOutcomeUnknown,
        Reason::TemplateUnknown,
        Reason::TemplateDisabled,
        Reason::TemplateNotApproved,
        Reason::TemplatePaused,
        Reason::MessagingLimitReached,
        Reason::RecipientMarketingCap,
        Reason::PairRate,
        Reason::QuietHours,
        Reason::Retrying,
        Reason::Throttled,
        Reason::AttemptsExhausted,
        Reason::ThrottledTooOften,
        Reason::RedeliveredTooOften,
        Reason::RecipientUnreachable,
        Reason::RecipientStoppedMarketing,
        Reason::RejectedByCloudApi,
        Reason::ExperimentHoldout,
        Reason::Undelivered,
        Reason::EnqueuePublishFailed,
        Reason::CampaignPaused,
        Reason::CampaignCancelled,
        Reason::CampaignEndBy,
        Reason::RetryRequested,
        Reason::SenderUnavailable,
        Reason::SenderQualityRed,
        Reason::MarketingPaused,
        Reason::StateUnavailable,
        Reason::StateRebuilding,
        Reason::StoreUnavailable,
    ];

    /// The stable code stored in PostgreSQL, returned by the API and used as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            Reason::RecipientSuppressed => "recipient_suppressed",
            Reason::RecipientOptedOut => "recipient_opted_out",
            Reason::NoMarketingOptIn => "no_marketing_opt_in",
            Reason::OutsideServiceWindow => "outside_customer_service_window",
            Reason::SendOutcomeUnknown => "send_outcome_unknown",
            Reason::TemplateUnknown => "unknown_template",
            Reason::TemplateDisabled => "template_disabled",
            Reason::TemplateNotApproved => "template_not_approved",
            Reason::TemplatePaused => "template_paused",
            Reason::MessagingLimitReached => "messaging_limit_reached",
            Reason::RecipientMarketingCap => "recipient_marketing_cap",
            Reason::PairRate => "pair_rate",
            Reason::QuietHours => "quiet_hours",
            Reason::Retrying => "retrying",
            Reason::Throttled => "throttled",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::ThrottledTooOften => "throttled_too_often",
            Reason::RedeliveredTooOften => "redelivered_too_often",
            Reason::RecipientUnreachable => "recipient_unreachable",
            Reason::RecipientStoppedMarketing => "recipient_stopped_marketing",
            Reason::RejectedByCloudApi => "rejected_by_cloud_api",
            Reason::ExperimentHoldout => "experiment_holdout",
            Reason::Undelivered => "undelivered",
            Reason::EnqueuePublishFailed => "enqueue_publish_failed",
            Reason::CampaignPaused => "campaign_paused",
            Reason::CampaignCancelled => "campaign_cancelled",
            Reason::CampaignEndBy => "campaign_end_by",
            Reason::RetryRequested => "retry_requested",
            Reason::SenderUnavailable => "sender_unavailable",
            Reason::SenderQualityRed => "sender_quality_red",
            Reason::MarketingPaused => "marketing_paused",
            Reason::StateUnavailable => "state_unavailable",
            Reason::StateRebuilding => "state_rebuilding",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }

    /// Reads a stored code back; `None` for a code this version does not know.
    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// A sentence for a person: why, and where it helps, what to do.
    pub fn message(self) -> &'static str {
        match self {
            Reason::RecipientSuppressed => {
                "Meta reported this number is not on WhatsApp (131026); it is suppressed"
            }
            Reason::RecipientOptedOut => "the recipient opted out of this kind of message",
            Reason::NoMarketingOptIn => {
                "marketing messages need a recorded opt-in from the recipient"
            }
            Reason::OutsideServiceWindow => {
                "free-form messages need an open 24 h customer-service window; send a template"
            }
            Reason::SendOutcomeUnknown => {
                "the send may have reached Meta before the process stopped; not sent again"
            }
            Reason::TemplateUnknown => "the template is not in the registry; sync templates",
            Reason::TemplateDisabled => "Meta disabled the template",
            Reason::TemplateNotApproved => "the template is not approved",
            Reason::TemplatePaused => "Meta paused the template for low quality",
            Reason::MessagingLimitReached => {
                "the sender's messaging limit for the moving 24 h is used up"
            }
            Reason::RecipientMarketingCap => {
                "Meta's per-user marketing limit was reached; tried again a day later"
            }
            Reason::PairRate => "too many messages to this recipient in a short time",
            Reason::QuietHours => "waiting for the end of the campaign's quiet hours",
            Reason::Retrying => "a temporary failure; tried again after a pause",
            Reason::Throttled => "Meta asked to slow down; tried again after a pause",
            Reason::AttemptsExhausted => "every attempt failed with a temporary error",
            Reason::ThrottledTooOften => "Meta throttled this message too many times",
            Reason::RedeliveredTooOften => "workers kept stopping while sending this message",
            Reason::RecipientUnreachable => "the number is not a WhatsApp user",
            Reason::RecipientStoppedMarketing => {
                "the recipient stopped marketing messages from this business"
            }
            Reason::RejectedByCloudApi => "Meta refused the message as it is",
            Reason::ExperimentHoldout => "Meta held the message back for an experiment",
            Reason::Undelivered => "Meta could not deliver the message",
            Reason::EnqueuePublishFailed => "the message could not be queued",
            Reason::CampaignPaused => "the campaign is paused",
            Reason::CampaignCancelled => "the campaign was cancelled",
            Reason::CampaignEndBy => "the campaign reached its end-by time",
            Reason::RetryRequested => "queued again by a retry of the campaign's failures",
            Reason::SenderUnavailable => "the sender is paused or not connected",
            Reason::SenderQualityRed => "the sender's quality is RED; marketing waits",
            Reason::MarketingPaused => "marketing on this sender is held after a spam-rate answer",
            Reason::StateUnavailable => "Redis could not be read",
            Reason::StateRebuilding => {
                "Redis lost its data; its copy of PostgreSQL's state is being rebuilt"
            }
            Reason::StoreUnavailable => "PostgreSQL cannot record outcomes",
        }
    }

    /// Whether a message that failed for this reason could succeed if sent again (a campaign's
    /// retry-failed): not when the recipient is unreachable, stopped marketing or opted out, not
    /// when the send may have reached Meta, and not when the template or the message is wrong.
    pub fn worth_retrying(self) -> bool {
        match self {
            Reason::RecipientSuppressed
            | Reason::RecipientOptedOut
            | Reason::NoMarketingOptIn
            | Reason::OutsideServiceWindow
            | Reason::SendOutcomeUnknown
            | Reason::TemplateUnknown
            | Reason::TemplateDisabled
            | Reason::TemplateNotApproved
            | Reason::RecipientUnreachable
            | Reason::RecipientStoppedMarketing
            | Reason::RejectedByCloudApi
            | Reason::ExperimentHoldout => false,
            Reason::TemplatePaused
            | Reason::MessagingLimitReached
            | Reason::RecipientMarketingCap
            | Reason::PairRate
            | Reason::QuietHours
            | Reason::Retrying
            | Reason::Throttled
            | Reason::AttemptsExhausted
            | Reason::ThrottledTooOften
            | Reason::RedeliveredTooOften
            | Reason::Undelivered
            | Reason::EnqueuePublishFailed
            | Reason::CampaignPaused
            | Reason::CampaignCancelled
            | Reason::CampaignEndBy
            | Reason::RetryRequested
            | Reason::SenderUnavailable
            | Reason::SenderQualityRed
            | Reason::MarketingPaused
            | Reason::StateUnavailable
            | Reason::StateRebuilding
            | Reason::StoreUnavailable => true,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_code_that_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.code();
            assert_eq!(Reason::parse(code), Some(reason), "{code}");
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code} is not snake_case"
            );
            assert!(!reason.message().is_empty());
            seen.insert(reason);
        }
        assert_eq!(Reason::parse("template_unknown"), None);
        assert_eq!(Reason::parse(""), None);
        assert_eq!(seen.len(), Reason::ALL.len());
    }

    #[test]
    fn retry_failed_leaves_what_cannot_succeed() {
        // The bug this enum replaced: the decision recorded `unknown_template` while the retry rule
        // listed `template_unknown`, so retry-failed requeued unknown-template failures.
        let stored = Reason::TemplateUnknown.code();
        assert!(!Reason::parse(stored).unwrap().worth_retrying());
        let table = [
            (Reason::AttemptsExhausted, true),
            (Reason::ThrottledTooOften, true),
            (Reason::RedeliveredTooOften, true),
            (Reason::Undelivered, true),
            (Reason::EnqueuePublishFailed, true),
            (Reason::TemplatePaused, true),
            (Reason::RecipientUnreachable, false),
            (Reason::RecipientStoppedMarketing, false),
            (Reason::RecipientOptedOut, false),
            (Reason::RecipientSuppressed, false),
            (Reason::NoMarketingOptIn, false),
            (Reason::SendOutcomeUnknown, false),
            (Reason::TemplateDisabled, false),
            (Reason::TemplateUnknown, false),
            (Reason::TemplateNotApproved, false),
            (Reason::RejectedByCloudApi, false),
            (Reason::OutsideServiceWindow, false),
            (Reason::ExperimentHoldout, false),
        ];
        for (reason, expected) in table {
            assert_eq!(reason.worth_retrying(), expected, "{reason}");
        }
    }
}
