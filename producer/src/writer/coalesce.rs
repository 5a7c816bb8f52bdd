//! Coalescing, as a pure function: the events of one Component that arrive in one batch are
//! decided together ([`decide`]), in stream order, against one read of it, so that they take
//! one status write instead of one each.
//!
//! Each event is decided as if the ones before it had been written: one the earlier ones
//! outrank is stale, one that outranks them wins. The result is the status one-at-a-time
//! writes would have left, and each applied event still counts, and still gets its
//! Kubernetes Events, in order: `kubectl describe` shows `Deploying` before `Ready` even when
//! only `Ready`'s status was written.

use helmq_schemas::component::{Component, ComponentStatus};
use helmq_schemas::event::{JobAction, StatusEvent};

use super::Outcome;
use super::apply::apply;
use super::issued::{Verdict, answers_issued};

/// What to do with one Component's events.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What happens to each event, in the order given.
    pub outcomes: Vec<Outcome>,
    /// The status to write; `None` when no event was applied.
    pub status: Option<ComponentStatus>,
    /// An applied `Terminated` answers the issued delete job: our finalizer goes (when the
    /// Component is being deleted and still carries it).
    pub remove_finalizer: bool,
}

/// Decides `events` (of `component`'s subject, in stream order) one after another, each against
/// the status the ones before it left; `handler` goes into `claimedBy`.
pub fn decide(component: &Component, events: &[StatusEvent], handler: &str) -> Decision {
    let mut status = component.status.clone().unwrap_or_default();
    let mut applied = false;
    let mut remove_finalizer = false;
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        // The verdict reads the issued job, which no applied event changes: the read decides.
        let outcome = match answers_issued(component, event) {
            Verdict::OtherObject => Outcome::Orphan,
            Verdict::Unissued(reason) => Outcome::Unissued(reason),
            Verdict::Answers(action) => match apply(&status, event, handler) {
                None => Outcome::Stale,
                Some(patch) => {
                    remove_finalizer |= patch.remove_finalizer && action == JobAction::Delete;
                    status = patch.status;
                    applied = true;
                    Outcome::Applied
                }
            },
        };
        outcomes.push(outcome);
    }
    Decision {
        outcomes,
        status: applied.then_some(status),
        remove_finalizer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::component::{HandlerStatus, IssuedJob, Phase};
    use helmq_schemas::event::{StatusPhase, issued_job_id};
    use helmq_tests::build::{component, uid};

    use crate::plan::component_ref;

    const NONCE: &str = "5e1f0c2a9b7d4e3f8a6b1c0d2e3f4a5b";

    /// `web` at generation 1 with its `action` job issued.
    fn live(action: JobAction) -> Component {
        let c = component("web").uid(&uid("1")).generation(1);
        let target = component_ref(&c.clone().build());
        let job = IssuedJob {
            id: issued_job_id(&target, action, NONCE),
            generation: 1,
            action,
            refresh: 0,
            forced: false,
            drift_check: false,
        };
        c.status(ComponentStatus {
            handler_status: Some(HandlerStatus {
                issued_job: Some(job),
                ..Default::default()
            }),
            ..Default::default()
        })
        .build()
    }

    /// `phase` of attempt `attempt` of the job issued for `live`.
    fn event(live: &Component, phase: StatusPhase, attempt: u32) -> StatusEvent {
        let job = live
            .status
            .as_ref()
            .and_then(|s| s.handler_status.as_ref())
            .and_then(|h| h.issued_job.as_ref())
            .expect("an issued job");
        StatusEvent::new(
            &job.id,
            component_ref(live),
            phase,
            format!("{phase:?}"),
            attempt,
            "w",
            jiff::Timestamp::now(),
        )
    }

    /// What one-at-a-time writes leave: each event applied to the status the previous left.
    fn one_at_a_time(live: &Component, events: &[StatusEvent]) -> Option<ComponentStatus> {
        let mut status = live.status.clone().unwrap_or_default();
        let mut written = None;
        for event in events {
            if let Some(patch) = apply(&status, event, "helm") {
                status = patch.status;
                written = Some(status.clone());
            }
        }
        written
    }

    #[test]
    fn a_start_and_its_success_are_one_write_of_the_success_both_applied() {
        use StatusPhase::{Deploying, Ready};
        let c = live(JobAction::Apply);
        let events = [event(&c, Deploying, 1), event(&c, Ready, 1)];
        let decision = decide(&c, &events, "helm");
        assert_eq!(decision.outcomes, [Outcome::Applied, Outcome::Applied]);
        let status = decision.status.clone().expect("a status to write");
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(Some(status), one_at_a_time(&c, &events));
        assert!(!decision.remove_finalizer);
    }

    #[test]
    fn every_order_of_a_batch_leaves_what_one_at_a_time_writes_leave() {
        use StatusPhase::{Deploying, Failed, Ready};
        let c = live(JobAction::Apply);
        let all = [
            event(&c, Deploying, 1),
            event(&c, Failed, 1),
            event(&c, Deploying, 2),
            event(&c, Ready, 2),
        ];
        // Every order of the four (a redelivery after a Nak can land anywhere).
        let orders = (0..256_usize)
            .map(|k| [k % 4, k / 4 % 4, k / 16 % 4, k / 64])
            .filter(|o| o.iter().map(|i| 1 << i).sum::<usize>() == 0b1111);
        let mut seen = 0;
        for order in orders {
            seen += 1;
            let events: Vec<StatusEvent> = order.iter().map(|&i| all[i].clone()).collect();
            let decision = decide(&c, &events, "helm");
            assert_eq!(decision.status, one_at_a_time(&c, &events), "{order:?}");
            assert_eq!(
                decision.status.and_then(|s| s.phase),
                Some(Phase::Ready),
                "{order:?}"
            );
        }
        assert_eq!(seen, 24);
    }

    #[test]
    fn stale_strays_and_other_objects_are_told_apart_and_change_nothing() {
        use StatusPhase::{Deploying, Ready};
        let c = live(JobAction::Apply);
        let mut other = event(&c, Ready, 1);
        other.component.uid = Some(uid("2"));
        let mut stray = event(&c, Ready, 1);
        stray.component.uid = None;
        let mut foreign = event(&c, Deploying, 1);
        foreign.job_id = "another job".into();
        let events = [
            event(&c, Ready, 1),
            event(&c, Deploying, 1),
            other,
            stray,
            foreign,
        ];
        let decision = decide(&c, &events, "helm");
        assert_eq!(decision.outcomes[0], Outcome::Applied);
        // A job's success outranks its start: the late Deploying is stale.
        assert_eq!(decision.outcomes[1], Outcome::Stale);
        assert_eq!(decision.outcomes[2], Outcome::Orphan);
        assert!(matches!(decision.outcomes[3], Outcome::Unissued(_)));
        assert!(matches!(decision.outcomes[4], Outcome::Unissued(_)));
        assert_eq!(decision.status.and_then(|s| s.phase), Some(Phase::Ready));
    }

    #[test]
    fn nothing_applied_is_nothing_to_write() {
        let c = live(JobAction::Apply);
        let mut stray = event(&c, StatusPhase::Ready, 1);
        stray.component.uid = None;
        assert_eq!(decide(&c, &[stray], "helm").status, None);
    }

    #[test]
    fn terminated_of_the_issued_delete_job_removes_the_finalizer_after_terminating() {
        use StatusPhase::{Terminated, Terminating};
        let c = live(JobAction::Delete);
        let events = [event(&c, Terminating, 1), event(&c, Terminated, 1)];
        let decision = decide(&c, &events, "helm");
        assert_eq!(decision.outcomes, [Outcome::Applied, Outcome::Applied]);
        assert!(decision.remove_finalizer);
        assert!(!decide(&c, &events[..1], "helm").remove_finalizer);
    }
}
