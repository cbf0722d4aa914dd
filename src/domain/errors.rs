//! Classification of every send outcome by Meta's error code, in one place.
//!
//! The worker never inspects error text: it asks [`classify`] what a failure means and acts on the
//! answer. Codes come from Meta's error-code reference.

use std::time::Duration;

use super::reason::Reason;

/// Why a send did not return a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    #[error("Cloud API error {code} (HTTP {http_status}): {message}")]
    Api {
        http_status: u16,
        code: i64,
        message: String,
    },
    #[error("HTTP {0} without a Cloud API error body")]
    Http(u16),
    /// The request was sent and no answer came in time: Meta may have accepted it.
    #[error("request timed out")]
    Timeout,
    /// The exchange broke after the request may have reached Meta (a reset connection, a body
    /// lost or unreadable after a 200): Meta may have accepted it.
    #[error("answer lost: {0}")]
    AnswerLost(String),
    /// No connection was made: the request never reached Meta.
    #[error("connection failed: {0}")]
    Connect(String),
}

impl SendFailure {
    /// The code recorded in PostgreSQL and metrics: Meta's code, or the HTTP status, or 0.
    pub fn code(&self) -> i64 {
        match self {
            SendFailure::Api { code, .. } => *code,
            SendFailure::Http(status) => i64::from(*status),
            SendFailure::Timeout | SendFailure::AnswerLost(_) | SendFailure::Connect(_) => 0,
        }
    }

    pub fn label(&self) -> String {
        match self {
            SendFailure::Api { code, .. } => code.to_string(),
            SendFailure::Http(status) => format!("http_{status}"),
            SendFailure::Timeout => "timeout".into(),
            SendFailure::AnswerLost(_) => "answer_lost".into(),
            SendFailure::Connect(_) => "connect".into(),
        }
    }
}

/// What the dispatcher does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later with exponential backoff and jitter; counts against the attempt budget.
    Retry,
    /// The request may have reached Meta and no answer says what became of it.
    OutcomeUnknown,
    /// The number's throughput cap was hit: slow the sender down and retry.
    ThrottleSender,
    /// Too many messages to this recipient: retry this recipient only, after 4^n seconds.
    ThrottleRecipient,
    /// Graph API rate limit on the app: retry after a pause.
    ThrottleApp,
    /// Meta is under maintenance: retry after the given pause.
    RetryAfter(Duration),
    /// The message can never succeed as it is.
    Fail,
    /// The recipient cannot receive WhatsApp messages (131026): fail and suppress if configured.
    FailUnreachable,
    /// The recipient stopped marketing (131050): fail and record a marketing opt-out.
    FailMarketingOptOut,
    /// A free-form message outside the service window (131047).
    FailOutsideWindow,
    /// Per-user marketing cap (131049): try this recipient again a day later.
    DeferRecipient,
    /// The template is paused (132015): hold its sends.
    HoldTemplate,
    /// The template is disabled (132016): fail its sends.
    FailTemplateDisabled,
    /// Account-level problem: pause the sender, keep its messages, alert.
    StopSender,
    /// Spam rate limit (131048): pause marketing on this sender and keep the messages.
    PauseMarketing,
}

pub fn classify(failure: &SendFailure) -> Disposition {
    match failure {
        SendFailure::Timeout | SendFailure::AnswerLost(_) => Disposition::OutcomeUnknown,
        SendFailure::Connect(_) => Disposition::Retry,
        SendFailure::Http(status) => classify_http(*status),
        SendFailure::Api {
            code, http_status, ..
        } => match *code {
            130429 => Disposition::ThrottleSender,
            131056 => Disposition::ThrottleRecipient,
            4 | 80007 => Disposition::ThrottleApp,
            1 | 2 | 131000 | 131016 | 133004 => Disposition::Retry,
            131057 => Disposition::RetryAfter(Duration::from_secs(60)),
            100 | 131008 | 131009 | 135000 | 131021 | 131051 | 132000 | 132001 | 132005
            | 132007 | 132012 | 131052 | 131053 | 130472 => Disposition::Fail,
            131026 => Disposition::FailUnreachable,
            131050 => Disposition::FailMarketingOptOut,
            131047 => Disposition::FailOutsideWindow,
            131049 => Disposition::DeferRecipient,
            132015 => Disposition::HoldTemplate,
            132016 => Disposition::FailTemplateDisabled,
            0 | 3 | 10 | 190 | 368 | 131005 | 131031 | 131042 | 131045 | 133010 | 130497 => {
                Disposition::StopSender
            }
            131048 => Disposition::PauseMarketing,
            _ => classify_http(*http_status),
        },
    }
}

/// Whether a message that ended failed could succeed if sent again (a campaign's retry-failed):
/// not when its reason says it cannot ([`Reason::worth_retrying`]), and not when Meta's code says
/// the recipient or the message itself is the problem.
pub fn worth_retrying(code: Option<i64>, reason: Option<Reason>) -> bool {
    if reason.is_some_and(|r| !r.worth_retrying()) {
        return false;
    }
    let Some(code) = code else { return true };
    let disposition = if (400..600).contains(&code) {
        // Recorded from an HTTP status without a Cloud API error body.
        classify_http(code as u16)
    } else {
        classify(&SendFailure::Api {
            http_status: 400,
            code,
            message: String::new(),
        })
    };
    !matches!(
        disposition,
        Disposition::Fail
            | Disposition::FailUnreachable
            | Disposition::FailMarketingOptOut
            | Disposition::FailOutsideWindow
            | Disposition::FailTemplateDisabled
    )
}

/// Unknown codes fall back to the HTTP status: a server error is worth another try, a client
/// error is not.
fn classify_http(status: u16) -> Disposition {
    match status {
        429 => Disposition::ThrottleSender,
        408 | 500..=599 => Disposition::Retry,
        401 | 403 => Disposition::StopSender,
        _ => Disposition::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i64) -> SendFailure {
        SendFailure::Api {
            http_status: 400,
            code,
            message: String::new(),
        }
    }

    #[test]
    fn only_failures_that_can_succeed_are_worth_retrying() {
        use Reason::*;
        assert!(worth_retrying(Some(131000), Some(AttemptsExhausted)));
        assert!(worth_retrying(Some(500), Some(AttemptsExhausted)));
        assert!(worth_retrying(Some(130429), Some(ThrottledTooOften)));
        assert!(worth_retrying(None, Some(RedeliveredTooOften)));
        assert!(!worth_retrying(Some(131026), Some(RecipientUnreachable)));
        assert!(!worth_retrying(Some(131026), None));
        assert!(!worth_retrying(
            Some(131050),
            Some(RecipientStoppedMarketing)
        ));
        assert!(!worth_retrying(None, Some(RecipientOptedOut)));
        assert!(!worth_retrying(None, Some(SendOutcomeUnknown)));
        assert!(!worth_retrying(Some(132001), Some(RejectedByCloudApi)));
        // Recorded by the decision for a template missing from the registry.
        assert!(!worth_retrying(None, Reason::parse("unknown_template")));
    }

    #[test]
    fn throttles_slow_down_the_right_thing() {
        assert_eq!(classify(&api(130429)), Disposition::ThrottleSender);
        assert_eq!(classify(&api(131056)), Disposition::ThrottleRecipient);
        assert_eq!(classify(&api(80007)), Disposition::ThrottleApp);
    }

    #[test]
    fn transient_errors_retry() {
        for code in [1, 2, 131000, 131016, 133004] {
            assert_eq!(classify(&api(code)), Disposition::Retry, "{code}");
        }
        assert_eq!(classify(&SendFailure::Http(503)), Disposition::Retry);
        // Never sent: safe to send again.
        assert_eq!(
            classify(&SendFailure::Connect("refused".into())),
            Disposition::Retry
        );
        assert_eq!(
            classify(&api(131057)),
            Disposition::RetryAfter(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_request_that_may_have_reached_meta_has_an_unknown_outcome() {
        assert_eq!(classify(&SendFailure::Timeout), Disposition::OutcomeUnknown);
        assert_eq!(
            classify(&SendFailure::AnswerLost("reset".into())),
            Disposition::OutcomeUnknown
        );
    }

    #[test]
    fn permanent_errors_never_retry() {
        for code in [
            100, 131008, 131009, 135000, 131021, 131051, 132000, 132001, 132005, 132007, 132012,
            131052, 131053,
        ] {
            assert_eq!(classify(&api(code)), Disposition::Fail, "{code}");
        }
        assert_eq!(classify(&api(131026)), Disposition::FailUnreachable);
        assert_eq!(classify(&api(131050)), Disposition::FailMarketingOptOut);
        assert_eq!(classify(&api(131047)), Disposition::FailOutsideWindow);
        assert_eq!(classify(&api(132016)), Disposition::FailTemplateDisabled);
        assert_eq!(classify(&SendFailure::Http(400)), Disposition::Fail);
    }

    #[test]
    fn account_problems_stop_the_sender() {
        for code in [
            0, 3, 10, 190, 368, 131005, 131031, 131042, 131045, 133010, 130497,
        ] {
            assert_eq!(classify(&api(code)), Disposition::StopSender, "{code}");
        }
        assert_eq!(classify(&api(131048)), Disposition::PauseMarketing);
        assert_eq!(classify(&api(132015)), Disposition::HoldTemplate);
        assert_eq!(classify(&api(131049)), Disposition::DeferRecipient);
    }

    #[test]
    fn unknown_codes_fall_back_to_http_status() {
        let server = SendFailure::Api {
            http_status: 502,
            code: 999_999,
            message: String::new(),
        };
        assert_eq!(classify(&server), Disposition::Retry);
        assert_eq!(classify(&api(999_999)), Disposition::Fail);
    }
}
