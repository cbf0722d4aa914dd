//! The post-send policy: what pregon does after the Cloud API refused a send.
//!
//! Classification ([`super::errors::classify`]) answers "what kind of failure is this"; this
//! policy alone owns the budgets (attempts, throttles), the backoff and its jitter, the waits and
//! exhaustion, and names the side effect a failure has beyond its message (slow the sender down,
//! pause it, hold its marketing, record an opt-out, suppress the recipient, mark the template).
//! The worker only carries out what [`after_failure`] returns.

use std::time::Duration;

use super::DeliveryMode;
use super::decision::TemplateStatus;
use super::errors::{Disposition, SendFailure, classify};
use super::reason::Reason;
use super::retry::{BackoffPolicy, pair_rate_backoff};

/// How long a message refused for Meta's per-user marketing cap (131049) waits: Meta counts the
/// cap per day, so the message goes again no earlier than a day later.
pub const RECIPIENT_MARKETING_CAP_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Wait after a Graph API rate limit on the app (4, 80007): the limit is counted per hour, so a
/// short pause spreads retries out without hammering it.
pub const APP_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// Wait after a throughput answer (130429): the sender's pacer slows down at the same time, so
/// the message only needs to step out of the current second.
pub const SENDER_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// The limits the policy works within, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Send attempts before a transiently failing message is given up.
    pub max_attempts: u32,
    /// Throttle answers tolerated per message.
    pub max_throttles: u32,
    pub backoff: BackoffPolicy,
    /// How long messages of a paused template wait before they are looked at again.
    pub template_pause_recheck: Duration,
    /// How soon a message put back because of its sender is looked at again.
    pub hold_recheck: Duration,
    /// How long marketing on a sender holds after a spam-rate answer (131048).
    pub marketing_pause_on_spam: Duration,
    /// Suppress recipients Meta reports as not on WhatsApp (131026).
    pub suppress_unreachable: bool,
}

/// What the failing job had used of its budgets before this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Send attempts made before this one.
    pub attempts: u32,
    /// Throttle answers received before this one.
    pub throttles: u32,
}

/// What becomes of the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Park it and try again after `wait`; recorded `queued` with the reason and the error.
    Retry {
        wait: Duration,
        reason: Reason,
        attempts: u32,
        throttles: u32,
    },
    /// Park it until `wait` has passed; recorded `deferred` with the reason and the error.
    Defer {
        wait: Duration,
        reason: Reason,
        attempts: u32,
    },
    /// Not the message's fault (its sender is paused or held): put it back after `wait` without
    /// spending an attempt.
    PutBack { wait: Duration },
    /// A budget is spent: record it failed and keep the job in the dead-letter queue.
    Exhaust { reason: Reason, attempts: u32 },
    /// It can never succeed as it is: record it failed.
    Fail { reason: Reason, attempts: u32 },
}

/// What the failure means beyond this message, for the worker to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// 130429: halve the sender's pace (at most once per cool-down).
    SlowDownSender,
    /// An account-level error: pause the sender until an operator or Meta clears it.
    PauseSender,
    /// 131048: hold marketing on the sender for this long.
    HoldMarketing(Duration),
    /// 131050: record a marketing opt-out for the recipient.
    OptOutMarketing,
    /// 131026 with suppression on: suppress the recipient.
    SuppressRecipient,
    /// 132015 / 132016: the template is paused or disabled; mark it in the registry at once so
    /// every other message of it waits or fails without being sent.
    MarkTemplate(TemplateStatus),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AfterFailure {
    pub outcome: Outcome,
    pub effect: Option<Effect>,
    /// The request may have reached Meta: the attempt's send claim stays, so no redelivery of
    /// this attempt sends it again. Otherwise the claim is released.
    pub may_have_sent: bool,
}

/// The one place that decides what a failed send means. `unit` is a random number in `[0, 1)`
/// for the backoff's jitter, passed in so the rule stays pure.
///
/// A failure whose request may have reached Meta (a timeout, a lost answer) is recorded
/// `send_outcome_unknown` when the caller asked for at most once (the default), and retried only
/// when it asked for at least once.
pub fn after_failure(
    failure: &SendFailure,
    spent: Spent,
    delivery: DeliveryMode,
    limits: &Limits,
    unit: f64,
) -> AfterFailure {
    let attempts = spent.attempts + 1;
    let only = |outcome| AfterFailure {
        outcome,
        effect: None,
        may_have_sent: false,
    };
    match classify(failure) {
        Disposition::OutcomeUnknown => {
            let outcome = match delivery {
                DeliveryMode::AtMostOnce => Outcome::Fail {
                    reason: Reason::SendOutcomeUnknown,
                    attempts,
                },
                DeliveryMode::AtLeastOnce if attempts >= limits.max_attempts => Outcome::Exhaust {
                    reason: Reason::AttemptsExhausted,
                    attempts,
                },
                DeliveryMode::AtLeastOnce => Outcome::Retry {
                    wait: limits.backoff.delay(attempts, unit),
                    reason: Reason::Retrying,
                    attempts,
                    throttles: spent.throttles,
                },
            };
            AfterFailure {
                outcome,
                effect: None,
                may_have_sent: true,
            }
        }
        disposition @ (Disposition::Retry
        | Disposition::ThrottleApp
        | Disposition::RetryAfter(_)) => {
            if attempts >= limits.max_attempts {
                return only(Outcome::Exhaust {
                    reason: Reason::AttemptsExhausted,
                    attempts,
                });
            }
            let wait = match disposition {
                Disposition::RetryAfter(d) => d,
                Disposition::ThrottleApp => APP_THROTTLE_WAIT,
                _ => limits.backoff.delay(attempts, unit),
            };
            only(Outcome::Retry {
                wait,
                reason: Reason::Retrying,
                attempts,
                throttles: spent.throttles,
            })
        }
        disposition @ (Disposition::ThrottleSender | Disposition::ThrottleRecipient) => {
            let throttles = spent.throttles + 1;
            if throttles > limits.max_throttles {
                return only(Outcome::Exhaust {
                    reason: Reason::ThrottledTooOften,
                    attempts,
                });
            }
            let (wait, effect) = if disposition == Disposition::ThrottleSender {
                (SENDER_THROTTLE_WAIT, Some(Effect::SlowDownSender))
            } else {
                (pair_rate_backoff(throttles), None)
            };
            AfterFailure {
                outcome: Outcome::Retry {
                    wait,
                    reason: Reason::Throttled,
                    attempts,
                    throttles,
                },
                effect,
                may_have_sent: false,
            }
        }
        Disposition::DeferRecipient => only(Outcome::Defer {
            wait: RECIPIENT_MARKETING_CAP_WAIT,
            reason: Reason::RecipientMarketingCap,
            attempts,
        }),
        Disposition::HoldTemplate => AfterFailure {
            outcome: Outcome::Defer {
                wait: limits.template_pause_recheck,
                reason: Reason::TemplatePaused,
                attempts,
            },
            effect: Some(Effect::MarkTemplate(TemplateStatus::Paused)),
            may_have_sent: false,
        },
        Disposition::FailTemplateDisabled => AfterFailure {
            outcome: Outcome::Fail {
                reason: Reason::TemplateDisabled,
                attempts,
            },
            effect: Some(Effect::MarkTemplate(TemplateStatus::Disabled)),
            may_have_sent: false,
        },
        Disposition::StopSender => AfterFailure {
            outcome: Outcome::PutBack {
                wait: limits.hold_recheck,
            },
            effect: Some(Effect::PauseSender),
            may_have_sent: false,
        },
        Disposition::PauseMarketing => AfterFailure {
            outcome: Outcome::PutBack {
                wait: limits.hold_recheck,
            },
            effect: Some(Effect::HoldMarketing(limits.marketing_pause_on_spam)),
            may_have_sent: false,
        },
        Disposition::FailMarketingOptOut => AfterFailure {
            outcome: Outcome::Fail {
                reason: Reason::RecipientStoppedMarketing,
                attempts,
            },
            effect: Some(Effect::OptOutMarketing),
            may_have_sent: false,
        },
        Disposition::FailUnreachable => AfterFailure {
            outcome: Outcome::Fail {
                reason: Reason::RecipientUnreachable,
                attempts,
            },
            effect: limits
                .suppress_unreachable
                .then_some(Effect::SuppressRecipient),
            may_have_sent: false,
        },
        Disposition::FailOutsideWindow => only(Outcome::Fail {
            reason: Reason::OutsideServiceWindow,
            attempts,
        }),
        Disposition::Fail => only(Outcome::Fail {
            reason: Reason::RejectedByCloudApi,
            attempts,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_attempts: 8,
            max_throttles: 50,
            backoff: BackoffPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(600),
            },
            template_pause_recheck: Duration::from_secs(60),
            hold_recheck: Duration::from_secs(2),
            marketing_pause_on_spam: Duration::from_secs(600),
            suppress_unreachable: true,
        }
    }

    fn api(code: i64) -> SendFailure {
        SendFailure::Api {
            http_status: 400,
            code,
            message: String::new(),
        }
    }

    const FRESH: Spent = Spent {
        attempts: 0,
        throttles: 0,
    };
    const LAST_ATTEMPT: Spent = Spent {
        attempts: 7,
        throttles: 0,
    };
    const LAST_THROTTLE: Spent = Spent {
        attempts: 60,
        throttles: 50,
    };

    fn retry(wait: Duration, reason: Reason, attempts: u32, throttles: u32) -> Outcome {
        Outcome::Retry {
            wait,
            reason,
            attempts,
            throttles,
        }
    }

    fn fail(reason: Reason, attempts: u32) -> Outcome {
        Outcome::Fail { reason, attempts }
    }

    /// Every kind of failure, fresh and with its budget spent.
    #[test]
    fn every_failure_class_by_budget() {
        use Effect::*;
        let l = limits();
        // unit 1.0: the backoff's upper end, so the table is exact.
        let first_backoff = l.backoff.delay(1, 1.0);
        let exhausted = |attempts| Outcome::Exhaust {
            reason: Reason::AttemptsExhausted,
            attempts,
        };
        let throttled_out = Outcome::Exhaust {
            reason: Reason::ThrottledTooOften,
            attempts: 61,
        };
        let table: Vec<(SendFailure, Spent, Outcome, Option<Effect>)> = vec![
            // transient: backoff, then exhaustion
            (
                api(131000),
                FRESH,
                retry(first_backoff, Reason::Retrying, 1, 0),
                None,
            ),
            (api(131000), LAST_ATTEMPT, exhausted(8), None),
            (
                SendFailure::Connect("refused".into()),
                FRESH,
                retry(first_backoff, Reason::Retrying, 1, 0),
                None,
            ),
            (
                SendFailure::Http(503),
                FRESH,
                retry(first_backoff, Reason::Retrying, 1, 0),
                None,
            ),
            (SendFailure::Http(503), LAST_ATTEMPT, exhausted(8), None),
            (
                api(80007),
                FRESH,
                retry(APP_THROTTLE_WAIT, Reason::Retrying, 1, 0),
                None,
            ),
            (
                api(131057),
                FRESH,
                retry(Duration::from_secs(60), Reason::Retrying, 1, 0),
                None,
            ),
            (api(131057), LAST_ATTEMPT, exhausted(8), None),
            // throughput: its own budget, not the attempts'
            (
                api(130429),
                FRESH,
                retry(SENDER_THROTTLE_WAIT, Reason::Throttled, 1, 1),
                Some(SlowDownSender),
            ),
            (
                api(130429),
                LAST_ATTEMPT,
                retry(SENDER_THROTTLE_WAIT, Reason::Throttled, 8, 1),
                Some(SlowDownSender),
            ),
            (api(130429), LAST_THROTTLE, throttled_out.clone(), None),
            (
                api(131056),
                FRESH,
                retry(Duration::from_secs(4), Reason::Throttled, 1, 1),
                None,
            ),
            (api(131056), LAST_THROTTLE, throttled_out, None),
            // deferrals
            (
                api(131049),
                LAST_ATTEMPT,
                Outcome::Defer {
                    wait: RECIPIENT_MARKETING_CAP_WAIT,
                    reason: Reason::RecipientMarketingCap,
                    attempts: 8,
                },
                None,
            ),
            (
                api(132015),
                FRESH,
                Outcome::Defer {
                    wait: l.template_pause_recheck,
                    reason: Reason::TemplatePaused,
                    attempts: 1,
                },
                Some(MarkTemplate(TemplateStatus::Paused)),
            ),
            // the sender's fault: no attempt spent
            (
                api(190),
                LAST_ATTEMPT,
                Outcome::PutBack {
                    wait: l.hold_recheck,
                },
                Some(PauseSender),
            ),
            (
                SendFailure::Http(401),
                FRESH,
                Outcome::PutBack {
                    wait: l.hold_recheck,
                },
                Some(PauseSender),
            ),
            (
                api(131048),
                FRESH,
                Outcome::PutBack {
                    wait: l.hold_recheck,
                },
                Some(HoldMarketing(l.marketing_pause_on_spam)),
            ),
            // final
            (
                api(132016),
                FRESH,
                fail(Reason::TemplateDisabled, 1),
                Some(MarkTemplate(TemplateStatus::Disabled)),
            ),
            (
                api(131026),
                FRESH,
                fail(Reason::RecipientUnreachable, 1),
                Some(SuppressRecipient),
            ),
            (
                api(131050),
                LAST_ATTEMPT,
                fail(Reason::RecipientStoppedMarketing, 8),
                Some(OptOutMarketing),
            ),
            (
                api(131047),
                FRESH,
                fail(Reason::OutsideServiceWindow, 1),
                None,
            ),
            (
                api(132001),
                FRESH,
                fail(Reason::RejectedByCloudApi, 1),
                None,
            ),
            (
                SendFailure::Http(400),
                FRESH,
                fail(Reason::RejectedByCloudApi, 1),
                None,
            ),
        ];
        for (failure, spent, outcome, effect) in table {
            // Known answers are treated alike whatever delivery the caller asked for.
            for delivery in [DeliveryMode::AtMostOnce, DeliveryMode::AtLeastOnce] {
                let got = after_failure(&failure, spent, delivery, &l, 1.0);
                let expected = AfterFailure {
                    outcome: outcome.clone(),
                    effect: effect.clone(),
                    may_have_sent: false,
                };
                assert_eq!(got, expected, "{failure} after {spent:?}, {delivery:?}");
            }
        }
    }

    /// A request that may have reached Meta is never sent again unless the caller asked for at
    /// least once; either way its send claim stays.
    #[test]
    fn unknown_outcomes_by_delivery_and_budget() {
        let l = limits();
        let first_backoff = l.backoff.delay(1, 1.0);
        let lost = SendFailure::AnswerLost("connection reset".into());
        let table = [
            (
                SendFailure::Timeout,
                FRESH,
                DeliveryMode::AtMostOnce,
                fail(Reason::SendOutcomeUnknown, 1),
            ),
            (
                lost.clone(),
                LAST_ATTEMPT,
                DeliveryMode::AtMostOnce,
                fail(Reason::SendOutcomeUnknown, 8),
            ),
            (
                SendFailure::Timeout,
                FRESH,
                DeliveryMode::AtLeastOnce,
                retry(first_backoff, Reason::Retrying, 1, 0),
            ),
            (
                lost,
                LAST_ATTEMPT,
                DeliveryMode::AtLeastOnce,
                Outcome::Exhaust {
                    reason: Reason::AttemptsExhausted,
                    attempts: 8,
                },
            ),
        ];
        for (failure, spent, delivery, outcome) in table {
            let got = after_failure(&failure, spent, delivery, &l, 1.0);
            let expected = AfterFailure {
                outcome,
                effect: None,
                may_have_sent: true,
            };
            assert_eq!(got, expected, "{failure} after {spent:?}, {delivery:?}");
        }
    }

    #[test]
    fn suppression_is_a_setting() {
        let l = Limits {
            suppress_unreachable: false,
            ..limits()
        };
        let got = after_failure(&api(131026), FRESH, DeliveryMode::AtMostOnce, &l, 0.5);
        assert_eq!(got.effect, None);
        assert_eq!(got.outcome, fail(Reason::RecipientUnreachable, 1));
    }

    #[test]
    fn backoff_jitter_stays_within_the_policy() {
        let l = limits();
        for unit in [0.0, 0.25, 0.5, 0.999] {
            let spent = Spent {
                attempts: 3,
                throttles: 0,
            };
            let Outcome::Retry { wait, .. } =
                after_failure(&api(1), spent, DeliveryMode::AtMostOnce, &l, unit).outcome
            else {
                panic!("a transient error is retried");
            };
            assert!(wait >= Duration::from_secs(4) && wait <= Duration::from_secs(8));
        }
    }

    /// Pair-rate throttles back off by powers of four, whatever lane the message is in.
    #[test]
    fn pair_rate_backoff_grows_with_the_throttles() {
        let l = limits();
        for (throttles, expected) in [(0, 4), (1, 16), (2, 64)] {
            let spent = Spent {
                attempts: 1,
                throttles,
            };
            let got = after_failure(&api(131056), spent, DeliveryMode::AtLeastOnce, &l, 0.0);
            assert_eq!(
                got.outcome,
                retry(
                    Duration::from_secs(expected),
                    Reason::Throttled,
                    2,
                    throttles + 1
                )
            );
        }
    }
}
