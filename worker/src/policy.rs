//! The worker's decisions as pure functions: whether a failure of a given class is retried (the
//! driver reads the class from helm's or kubectl's output, into the `failure` module's
//! `HelmFailure`), how long to wait before a retry, whether a job still matches the latest
//! intent of its Component, what to do after an attempt (the allowlist is in
//! [`crate::allowlist`]).

use std::time::Duration;

use helmq_schemas::event::{JobAction, JobEvent, StatusEvent};
use serde::{Deserialize, Serialize};

/// Whether a failed Helm run can succeed when tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retrying cannot help (bad config or values, missing chart, rendering error).
    Permanent,
    /// The cluster, the network or another operation got in the way: retry later.
    Transient,
}

/// Delays between attempts: capped exponential backoff with jitter (backon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Add a random share of the delay (up to 100%), so retries of many jobs spread out.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1-based): `min × 2^(attempt-1)`, plus up to
    /// the same again as jitter, never more than `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        helmq_telemetry::retry::backoff(self.min, self.max, attempt, self.jitter)
    }
}

/// What a job does, ordered inside one Component: a later generation wins, at the same
/// generation a delete (deletion does not bump the generation) wins over an apply, and among
/// applies of one generation a later refresh (a re-apply requested without a spec change) wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// `metadata.generation`.
    pub generation: i64,
    /// Apply, or delete (which orders after apply).
    pub action: JobAction,
    /// The apply's refresh (0 for a delete).
    pub refresh: u32,
}

impl Precedence {
    /// The position of a job.
    pub fn of(job: &JobEvent) -> Precedence {
        Precedence {
            generation: job.component.generation,
            action: job.action,
            refresh: match job.action {
                JobAction::Apply => job.refresh,
                JobAction::Delete => 0,
            },
        }
    }
}

/// How the job an intent names ended, or that it is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A worker has it.
    Running,
    /// Applied and ready.
    Ready,
    /// Failed for good.
    Failed,
    /// Uninstalled.
    Terminated,
}

/// The latest intent of a Component (value of the `helmq_intents` KV bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// Generation of the newest job seen.
    pub generation: i64,
    /// Its action.
    pub action: JobAction,
    /// Its id.
    pub job_id: String,
    /// How it went.
    pub outcome: Outcome,
    /// The terminal status it published, to publish again for a duplicate job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<StatusEvent>,
    /// Helm runs started for it: the attempt budget counts these, not deliveries (a delivery
    /// given back while it waited for the release lease did not try anything).
    #[serde(default)]
    pub runs: u32,
    /// The apply's refresh (see [`Precedence`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refresh: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Intent {
    /// The intent of a job that just started.
    pub fn running(job: &JobEvent) -> Intent {
        let position = Precedence::of(job);
        Intent {
            generation: position.generation,
            action: position.action,
            job_id: job.id.clone(),
            outcome: Outcome::Running,
            last_status: None,
            runs: 0,
            refresh: position.refresh,
        }
    }

    /// Its position.
    pub fn precedence(&self) -> Precedence {
        Precedence {
            generation: self.generation,
            action: self.action,
            refresh: self.refresh,
        }
    }
}

/// What to do with a job given the latest intent of its Component.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run it (and record it as the latest intent when it is newer).
    Run,
    /// A newer generation (or a delete) was requested: ack without running Helm.
    Superseded {
        /// The newer position.
        by: Precedence,
    },
    /// The same intent already succeeded: publish its terminal status again and ack.
    AlreadyDone(Box<StatusEvent>),
}

/// Compares a job with the latest intent. A failed intent is run again: a replayed dead letter
/// must be able to retry the same generation.
pub fn decide(job: Precedence, intent: Option<&Intent>) -> Decision {
    let Some(intent) = intent else {
        return Decision::Run;
    };
    let latest = intent.precedence();
    if job < latest {
        return Decision::Superseded { by: latest };
    }
    if job == latest
        && matches!(intent.outcome, Outcome::Ready | Outcome::Terminated)
        && let Some(status) = &intent.last_status
    {
        return Decision::AlreadyDone(Box::new(status.clone()));
    }
    Decision::Run
}

/// Whether a job that runs is recorded as its object's newest intent: when it is newer than the
/// live intent (or there is none), or when it runs a failed intent again.
pub fn records(job: Precedence, live: Option<&Intent>) -> bool {
    live.is_none_or(|i| {
        job > i.precedence() || (job == i.precedence() && i.outcome == Outcome::Failed)
    })
}

/// The intent a job is measured against, from the object's live intent and the tombstone of its
/// end: whichever is newer, the tombstone at equal positions (it is the finished one).
pub fn latest<'a>(live: Option<&'a Intent>, tombstone: Option<&'a Intent>) -> Option<&'a Intent> {
    match (live, tombstone) {
        (Some(live), Some(tombstone)) if live.precedence() > tombstone.precedence() => Some(live),
        (live, None) => live,
        (_, tombstone) => tombstone,
    }
}

/// The terminal status of a finished job, published again for a later delivery of it (a
/// redelivery, or a copy published under another id). When that delivery may have published
/// its own `Deploying`/`Terminating` first (`may_have_started`: it did, then waited for the
/// release lease and learned the job was done; or an earlier attempt of it did), the status is
/// stamped with the delivery's attempt and job sequence when that orders it higher, so that
/// start cannot outrank the outcome and leave the Component `Deploying` for ever. Otherwise it
/// goes out unchanged, with its dedupe id, and the status stream keeps the one event.
pub fn republished(
    status: &StatusEvent,
    attempt: u32,
    sequence: u64,
    may_have_started: bool,
) -> StatusEvent {
    if !may_have_started {
        return status.clone();
    }
    let mut again = status.clone();
    again.attempt = attempt;
    let again = again.for_job_sequence(sequence);
    if again.order > status.order {
        again
    } else {
        status.clone()
    }
}

/// What to do with the message after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterFailure {
    /// Nak with this delay: JetStream redelivers it as the next attempt.
    Retry(Duration),
    /// Publish the failure, dead-letter the job, then `Term` it.
    GiveUp,
}

/// Transient failures are retried while attempts remain; everything else gives up.
pub fn after_failure(
    failure: Failure,
    attempt: u32,
    max_attempts: u32,
    retry: &RetryPolicy,
) -> AfterFailure {
    match failure {
        Failure::Transient if attempt < max_attempts => AfterFailure::Retry(retry.delay(attempt)),
        _ => AfterFailure::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::event::{ComponentRef, StatusPhase};

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let policy = RetryPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: false,
        };
        let delays: Vec<u64> = (1..=9).map(|a| policy.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let jittered = RetryPolicy {
            jitter: true,
            ..policy
        };
        for attempt in 1..=12 {
            let base = policy.delay(attempt);
            let d = jittered.delay(attempt);
            assert!(
                d >= base && d <= (base * 2).min(policy.max),
                "{attempt}: {d:?}"
            );
        }
    }

    fn job(generation: i64, action: JobAction) -> Precedence {
        Precedence {
            generation,
            action,
            refresh: 0,
        }
    }

    fn refresh(generation: i64, refresh: u32) -> Precedence {
        Precedence {
            refresh,
            ..job(generation, JobAction::Apply)
        }
    }

    #[test]
    fn a_delete_orders_after_the_applies_of_its_generation_and_before_the_next() {
        use JobAction::{Apply, Delete};
        let order = [
            job(1, Apply),
            refresh(1, 1),
            refresh(1, 7),
            job(1, Delete),
            job(2, Apply),
            refresh(2, 1),
            job(2, Delete),
        ];
        for pair in order.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
    }

    #[test]
    fn a_refresh_of_a_finished_apply_runs_and_an_older_one_is_superseded() {
        let mut done = intent(3, JobAction::Apply, Outcome::Ready);
        done.refresh = 1;
        assert!(matches!(
            decide(refresh(3, 1), Some(&done)),
            Decision::AlreadyDone(_)
        ));
        assert_eq!(decide(refresh(3, 2), Some(&done)), Decision::Run);
        assert!(records(refresh(3, 2), Some(&done)));
        assert_eq!(
            decide(job(3, JobAction::Apply), Some(&done)),
            Decision::Superseded { by: refresh(3, 1) }
        );
    }

    fn intent(generation: i64, action: JobAction, outcome: Outcome) -> Intent {
        let component = ComponentRef {
            namespace: "ns".into(),
            name: "web".into(),
            uid: None,
            generation,
        };
        Intent {
            generation,
            action,
            job_id: "j".into(),
            outcome,
            runs: 0,
            refresh: 0,
            last_status: Some(StatusEvent::new(
                "j",
                component,
                StatusPhase::Ready,
                "ready",
                1,
                "w",
                jiff::Timestamp::UNIX_EPOCH,
            )),
        }
    }

    #[test]
    fn a_finished_status_published_again_orders_above_the_later_deliverys_start() {
        let done = intent(1, JobAction::Apply, Outcome::Ready)
            .last_status
            .unwrap()
            .for_job_sequence(10);
        // (attempt, sequence of the later delivery, (attempt, sequence) of what is published)
        let cases = [
            (2, 10, (2, 10)), // redelivered: its second attempt
            (1, 12, (1, 12)), // a copy stored later in the stream
            (3, 12, (3, 12)), // the copy's third attempt
            (1, 10, (1, 10)), // the same delivery: unchanged
            (1, 9, (1, 10)),  // an earlier copy: never lowered
        ];
        for (attempt, sequence, want) in cases {
            let again = republished(&done, attempt, sequence, true);
            assert_eq!(
                (again.attempt, again.job_sequence),
                want,
                "{attempt} {sequence}"
            );
            assert!(again.order >= done.order);
            assert_eq!(again.phase, done.phase);
            // Above the Deploying that delivery published before it found the job done.
            let start = StatusEvent::new(
                "j",
                done.component.clone(),
                StatusPhase::Deploying,
                "",
                attempt,
                "w",
                jiff::Timestamp::UNIX_EPOCH,
            )
            .for_job_sequence(sequence);
            assert!(again.position() > start.position(), "{attempt} {sequence}");
        }
        // A first delivery that published nothing yet: unchanged, so its dedupe id holds.
        assert_eq!(republished(&done, 1, 12, false), done);
    }

    #[test]
    fn older_generations_are_superseded_and_finished_ones_are_not_rerun() {
        use JobAction::{Apply, Delete};
        assert_eq!(decide(job(1, Apply), None), Decision::Run);
        let newer = intent(3, Apply, Outcome::Running);
        assert_eq!(
            decide(job(2, Apply), Some(&newer)),
            Decision::Superseded { by: job(3, Apply) }
        );
        assert_eq!(
            decide(job(3, Apply), Some(&newer)),
            Decision::Run,
            "a redelivery"
        );
        assert_eq!(decide(job(4, Apply), Some(&newer)), Decision::Run);
        // A delete of the same generation wins over its apply, not the other way round.
        assert_eq!(decide(job(3, Delete), Some(&newer)), Decision::Run);
        let deleting = intent(3, Delete, Outcome::Running);
        assert!(matches!(
            decide(job(3, Apply), Some(&deleting)),
            Decision::Superseded { .. }
        ));
        let done = intent(3, Apply, Outcome::Ready);
        assert!(matches!(
            decide(job(3, Apply), Some(&done)),
            Decision::AlreadyDone(s) if s.phase == StatusPhase::Ready
        ));
        // A failure is retried by a replay of the same generation.
        let failed = intent(3, Apply, Outcome::Failed);
        assert_eq!(decide(job(3, Apply), Some(&failed)), Decision::Run);
    }

    #[test]
    fn a_tombstone_outranks_the_live_intent_it_ended_and_stale_jobs_of_a_gone_object_are_skipped() {
        use JobAction::{Apply, Delete};
        let running_delete = intent(2, Delete, Outcome::Running);
        let tombstone = intent(2, Delete, Outcome::Terminated);
        let orchestrator_reapply = intent(5, Apply, Outcome::Running);
        // (live, tombstone) → which one a job is measured against.
        let cases: [(Option<&Intent>, Option<&Intent>, Option<&Intent>); 5] = [
            (None, None, None),
            (Some(&running_delete), None, Some(&running_delete)),
            (None, Some(&tombstone), Some(&tombstone)),
            // Left behind by a crash between the tombstone write and the live purge.
            (Some(&running_delete), Some(&tombstone), Some(&tombstone)),
            // An orchestrator applies the same name again at a newer generation.
            (
                Some(&orchestrator_reapply),
                Some(&tombstone),
                Some(&orchestrator_reapply),
            ),
        ];
        for (live, tomb, want) in cases {
            assert_eq!(latest(live, tomb), want, "{live:?} {tomb:?}");
        }
        // Against a tombstone: the delete again is a duplicate, a late apply is superseded.
        assert!(matches!(
            decide(job(2, Delete), Some(&tombstone)),
            Decision::AlreadyDone(_)
        ));
        assert_eq!(
            decide(job(1, Apply), Some(&tombstone)),
            Decision::Superseded { by: job(2, Delete) }
        );
        assert_eq!(decide(job(3, Apply), Some(&tombstone)), Decision::Run);
    }

    #[test]
    fn newer_jobs_and_reruns_of_failures_are_recorded_as_the_intent() {
        use JobAction::{Apply, Delete};
        assert!(records(job(1, Apply), None));
        assert!(records(
            job(2, Apply),
            Some(&intent(1, Apply, Outcome::Ready))
        ));
        assert!(records(
            job(1, Delete),
            Some(&intent(1, Apply, Outcome::Running))
        ));
        assert!(records(
            job(1, Apply),
            Some(&intent(1, Apply, Outcome::Failed))
        ));
        // A redelivery of the running intent changes nothing.
        assert!(!records(
            job(1, Apply),
            Some(&intent(1, Apply, Outcome::Running))
        ));
        assert!(!records(
            job(1, Apply),
            Some(&intent(2, Apply, Outcome::Running))
        ));
    }

    #[test]
    fn failures_retry_until_the_budget_is_spent() {
        let policy = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            after_failure(Failure::Transient, 1, 3, &policy),
            AfterFailure::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            after_failure(Failure::Transient, 2, 3, &policy),
            AfterFailure::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            after_failure(Failure::Transient, 3, 3, &policy),
            AfterFailure::GiveUp
        );
        assert_eq!(
            after_failure(Failure::Permanent, 1, 3, &policy),
            AfterFailure::GiveUp
        );
    }
}
