//! Settling a job's message: every step of a job says what is to happen to its message (a
//! [`Settlement`]) and [`settle`] carries it out, the one place that acks, Naks or
//! dead-letters and terminates a job. [`progress`] is the keep-alive a running job sends.

use std::time::Duration;

use async_nats::jetstream::message::{AckKind, Message};
use tracing::warn;

use crate::context::{Context, Delivery, Published};
use crate::dead_letter;
use crate::metrics::JobOutcome;

/// What is to happen to a job's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done with it: acked.
    Ack(Acked),
    /// A transient failure: Nak'ed to come again after `after`, counted as a retry.
    Retry {
        /// The delay before the next delivery.
        after: Duration,
    },
    /// Not handled now (shutdown, a busy or lost lease, NATS out of patience): Nak'ed to come
    /// again, after `after` when given.
    GiveBack {
        /// The delay before the next delivery; `None`: at once.
        after: Option<Duration>,
    },
    /// Copied to the dead-letter stream with `reason`, then terminated; given back instead when
    /// the copy cannot be stored.
    Bury {
        /// Why the job is dead: the dead letter's reason.
        reason: String,
        /// Failed for good, or refused as bad input.
        cause: Buried,
    },
}

/// Why a job is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acked {
    /// Helm applied or deleted it.
    Succeeded,
    /// A newer generation exists: Helm did not run, or was cancelled.
    Superseded,
    /// Already done: its status was published again.
    Duplicate,
}

/// Why a job is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buried {
    /// It failed for good (permanent failure, attempts spent, a status the server refuses, a
    /// panic).
    Failed,
    /// Bad input: refused on admission.
    Rejected,
}

impl Settlement {
    /// Given back at once.
    pub(crate) const GIVE_BACK: Settlement = Settlement::GiveBack { after: None };

    /// How the job ended when this settlement is carried out as planned.
    pub(crate) fn outcome(&self) -> JobOutcome {
        match self {
            Settlement::Ack(Acked::Succeeded) => JobOutcome::Succeeded,
            Settlement::Ack(Acked::Superseded) => JobOutcome::Superseded,
            Settlement::Ack(Acked::Duplicate) => JobOutcome::Duplicate,
            Settlement::Retry { .. } => JobOutcome::Retried,
            Settlement::GiveBack { .. } => JobOutcome::Requeued,
            Settlement::Bury {
                cause: Buried::Failed,
                ..
            } => JobOutcome::Failed,
            Settlement::Bury {
                cause: Buried::Rejected,
                ..
            } => JobOutcome::Rejected,
        }
    }

    /// The acknowledgement that settles the message (for [`Settlement::Bury`], once the dead
    /// letter is stored).
    fn ack_kind(&self) -> AckKind {
        match self {
            Settlement::Ack(_) => AckKind::Ack,
            Settlement::Retry { after } => AckKind::Nak(Some(*after)),
            Settlement::GiveBack { after } => AckKind::Nak(*after),
            Settlement::Bury { .. } => AckKind::Term,
        }
    }
}

/// After a status publish: go on when it was stored; give the job back when NATS ran out of
/// patience; dead-letter it when the server refuses the status for good (redelivering would
/// never change that).
pub(crate) fn unless_stored(published: Published) -> Result<(), Settlement> {
    match published {
        Published::Stored => Ok(()),
        Published::GaveUp => Err(Settlement::GIVE_BACK),
        Published::Refused(error) => {
            warn!(%error, "the job's status cannot be published; dead-lettering the job");
            Err(Settlement::Bury {
                reason: format!("its status cannot be published: {error}"),
                cause: Buried::Failed,
            })
        }
    }
}

/// Carries out `settlement` on a job's message, retrying until the server confirms or the hard
/// stop fires: the one place a job's message is acked, Nak'ed or terminated. A dead letter is
/// stored before the message is terminated (both remove it from the work queue); when it
/// cannot be, the message is given back. Returns how the job ended.
pub(crate) async fn settle(ctx: &Context, message: &Message, settlement: Settlement) -> JobOutcome {
    if matches!(settlement, Settlement::Retry { .. }) {
        ctx.metrics.retries.inc();
    }
    let settlement = match settlement {
        Settlement::Bury { reason, cause } => {
            if bury(ctx, message, &reason).await {
                Settlement::Bury { reason, cause }
            } else {
                Settlement::GIVE_BACK
            }
        }
        other => other,
    };
    let kind = settlement.ack_kind();
    let _ = if matches!(settlement, Settlement::Ack(_)) {
        // Not waited for: a lost ack only brings the job back, and its intent then says it is
        // done (or superseded).
        ctx.persist("ack the message", || message.ack_with(kind))
            .await
    } else {
        ctx.persist("settle the message", || message.double_ack_with(kind))
            .await
    };
    settlement.outcome()
}

/// Stores the dead letter of a delivered message; `false` when it cannot be.
async fn bury(ctx: &Context, message: &Message, reason: &str) -> bool {
    match Delivery::of(message) {
        Ok(delivery) => {
            dead_letter::store(ctx, &dead_letter::letter(message, delivery, reason)).await
        }
        // Not reached: a message is admitted to a job only with its metadata.
        Err(e) => {
            warn!(error = %e, "message without JetStream metadata; cannot dead-letter it");
            false
        }
    }
}

/// Tells the server the job is still being worked on (a Progress ack), so it does not
/// redeliver it while Helm runs or the job waits for its lease.
pub(crate) async fn progress(message: &Message) -> Result<(), async_nats::Error> {
    message.ack_with(AckKind::Progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_settlement_ends_the_job_as_its_metric_says() {
        let bury = |cause| Settlement::Bury {
            reason: "r".into(),
            cause,
        };
        let cases = [
            (Settlement::Ack(Acked::Succeeded), JobOutcome::Succeeded),
            (Settlement::Ack(Acked::Superseded), JobOutcome::Superseded),
            (Settlement::Ack(Acked::Duplicate), JobOutcome::Duplicate),
            (
                Settlement::Retry {
                    after: Duration::from_secs(3),
                },
                JobOutcome::Retried,
            ),
            (Settlement::GIVE_BACK, JobOutcome::Requeued),
            (
                Settlement::GiveBack {
                    after: Some(Duration::from_secs(1)),
                },
                JobOutcome::Requeued,
            ),
            (bury(Buried::Failed), JobOutcome::Failed),
            (bury(Buried::Rejected), JobOutcome::Rejected),
        ];
        for (settlement, want) in cases {
            assert_eq!(settlement.outcome(), want, "{settlement:?}");
        }
    }

    #[test]
    fn acks_naks_and_terms_follow_the_settlement() {
        let second = Duration::from_secs(1);
        let kind = |s: Settlement| s.ack_kind();
        assert!(matches!(
            kind(Settlement::Ack(Acked::Duplicate)),
            AckKind::Ack
        ));
        assert!(matches!(
            kind(Settlement::Retry { after: second }),
            AckKind::Nak(Some(d)) if d == second
        ));
        assert!(matches!(kind(Settlement::GIVE_BACK), AckKind::Nak(None)));
        assert!(matches!(
            kind(Settlement::GiveBack { after: Some(second) }),
            AckKind::Nak(Some(d)) if d == second
        ));
        assert!(matches!(
            kind(Settlement::Bury {
                reason: "r".into(),
                cause: Buried::Rejected
            }),
            AckKind::Term
        ));
    }

    #[test]
    fn a_status_not_stored_gives_the_job_back_or_buries_it() {
        assert_eq!(unless_stored(Published::Stored), Ok(()));
        assert_eq!(unless_stored(Published::GaveUp), Err(Settlement::GIVE_BACK));
        let refused = helmq_queue::PublishError::Refused {
            id: "j".into(),
            reason: "message too large".into(),
        };
        assert_eq!(
            unless_stored(Published::Refused(refused)),
            Err(Settlement::Bury {
                reason:
                    "its status cannot be published: publishing j was refused: message too large"
                        .into(),
                cause: Buried::Failed,
            })
        );
    }
}
