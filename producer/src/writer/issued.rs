//! Which status events may change a Component, as a pure function: [`answers_issued`].
//!
//! Anyone allowed to publish a job (an orchestrator, a tenant with its own subjects) makes a
//! worker publish status events that name the job's Component. The writer believes only those
//! that answer the job the producer issued for the live object: the same uid, a generation the
//! object has reached, the job id the producer recorded in `status.handlerStatus.issuedJob`
//! before it published the job, and a phase of that job's action. So an orchestrator's job
//! without a uid, a job forged with the real uid but another id, or a rejection naming a
//! generation far ahead changes nothing.
//!
//! A Component whose status records no issued job was last handled by a helmq from before
//! issued jobs: it accepts the id that helmq gave, [`default_job_id`] of its current
//! generation and of the action its state calls for (delete once it is being deleted), until
//! the producer records a job for it.

use helmq_schemas::component::Component;
use helmq_schemas::event::{JobAction, StatusEvent, default_job_id};

use crate::plan::component_ref;

/// Why an event answers no job issued for its Component; it is dropped (and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unissued {
    /// No uid: an orchestrator's job, which never changes a Component.
    #[error(
        "the event names no uid (a job published without a Component): it changes no Component"
    )]
    NoUid,
    /// A generation the object has not reached.
    #[error("generation {event} is above the component's metadata.generation {live}")]
    FutureGeneration {
        /// The event's generation.
        event: i64,
        /// `metadata.generation`.
        live: i64,
    },
    /// Another job id, or another generation, than the job issued for the Component.
    #[error(
        "the event does not answer the {action} job issued for generation {generation} (another job id or generation)"
    )]
    NotIssued {
        /// The generation of the job issued (or, without a record, the current one).
        generation: i64,
        /// The action of the job issued (or, without a record, the one expected).
        action: &'static str,
    },
    /// The job id matches, but the phase belongs to the other action (`Terminated` answering
    /// an apply job).
    #[error("phase {phase} does not answer a {action} job")]
    WrongPhase {
        /// The event's phase.
        phase: &'static str,
        /// The action of the job issued.
        action: &'static str,
    },
}

/// What the writer does with one event, before the stale rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answers the issued job of this action: apply it unless stale.
    Answers(JobAction),
    /// It is about another object of the same name (deleted and re-created): an orphan.
    OtherObject,
    /// It answers no job issued for the Component: dropped.
    Unissued(Unissued),
}

/// Whether `event` answers the job the producer issued for the live `component`.
pub fn answers_issued(component: &Component, event: &StatusEvent) -> Verdict {
    let target = &event.component;
    let Some(uid) = target.uid.as_deref().filter(|u| !u.is_empty()) else {
        return Verdict::Unissued(Unissued::NoUid);
    };
    if component.metadata.uid.as_deref() != Some(uid) {
        return Verdict::OtherObject;
    }
    let live = component.metadata.generation.unwrap_or(0);
    if target.generation > live {
        return Verdict::Unissued(Unissued::FutureGeneration {
            event: target.generation,
            live,
        });
    }
    let issued = component
        .status
        .as_ref()
        .and_then(|s| s.handler_status.as_ref())
        .and_then(|h| h.issued_job.as_ref());
    let (id, generation, action) = match issued {
        Some(job) => (job.id.clone(), job.generation, job.action),
        None => {
            let action = if component.metadata.deletion_timestamp.is_some() {
                JobAction::Delete
            } else {
                JobAction::Apply
            };
            (
                default_job_id(&component_ref(component), action),
                live,
                action,
            )
        }
    };
    if event.job_id != id || target.generation != generation {
        return Verdict::Unissued(Unissued::NotIssued {
            generation,
            action: action.as_str(),
        });
    }
    if event.phase.is_deletion() != (action == JobAction::Delete) {
        return Verdict::Unissued(Unissued::WrongPhase {
            phase: event.phase.as_str(),
            action: action.as_str(),
        });
    }
    Verdict::Answers(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::component::{ComponentStatus, HandlerStatus, IssuedJob};
    use helmq_schemas::event::{StatusPhase, issued_job_id};
    use helmq_tests::build::{component, uid};
    use jiff::Timestamp;

    const NONCE: &str = "5e1f0c2a9b7d4e3f8a6b1c0d2e3f4a5b";

    /// `web` at `generation`, with `issued` recorded (if any), being deleted when `deleting`.
    fn live(generation: i64, issued: Option<(i64, JobAction)>, deleting: bool) -> Component {
        let mut c = component("web").uid(&uid("1")).generation(generation);
        if deleting {
            c = c.deleting_since(Timestamp::from_second(1_800_000_000).unwrap());
        }
        if let Some((generation, action)) = issued {
            let job = IssuedJob {
                id: id(generation, action, Some(NONCE)),
                generation,
                action,
                refresh: 0,
                forced: false,
                drift_check: false,
            };
            c = c.status(ComponentStatus {
                handler_status: Some(HandlerStatus {
                    issued_job: Some(job),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        c.build()
    }

    fn id(generation: i64, action: JobAction, nonce: Option<&str>) -> String {
        let mut target = component_ref(&component("web").uid(&uid("1")).build());
        target.generation = generation;
        match nonce {
            Some(nonce) => issued_job_id(&target, action, nonce),
            None => default_job_id(&target, action),
        }
    }

    fn event(
        job_id: &str,
        event_uid: Option<&str>,
        generation: i64,
        phase: StatusPhase,
    ) -> StatusEvent {
        let mut target = component_ref(&component("web").build());
        target.uid = event_uid.map(str::to_owned);
        target.generation = generation;
        StatusEvent::new(
            job_id,
            target,
            phase,
            "m",
            1,
            "worker-1",
            Timestamp::from_second(1_800_000_000).unwrap(),
        )
    }

    #[test]
    fn only_answers_to_the_issued_job_change_a_component() {
        use JobAction::{Apply, Delete};
        use StatusPhase::*;
        let real = uid("1");
        let other = uid("2");
        let real = Some(real.as_str());
        let apply2 = id(2, Apply, Some(NONCE));
        let delete2 = id(2, Delete, Some(NONCE));
        let not_issued = |generation, action: JobAction| {
            Verdict::Unissued(Unissued::NotIssued {
                generation,
                action: action.as_str(),
            })
        };
        let cases: Vec<(&str, Component, StatusEvent, Verdict)> = vec![
            (
                "the issued apply job's Ready",
                live(2, Some((2, Apply)), false),
                event(&apply2, real, 2, Ready),
                Verdict::Answers(Apply),
            ),
            (
                "the producer's Claimed for the issued apply job",
                live(2, Some((2, Apply)), false),
                event(&apply2, real, 2, Claimed),
                Verdict::Answers(Apply),
            ),
            (
                "the issued delete job's Terminated",
                live(3, Some((3, Delete)), true),
                event(&id(3, Delete, Some(NONCE)), real, 3, Terminated),
                Verdict::Answers(Delete),
            ),
            (
                "the issued job of the previous generation, not yet re-issued",
                live(3, Some((2, Apply)), false),
                event(&apply2, real, 2, Ready),
                Verdict::Answers(Apply),
            ),
            (
                "forged: the real uid, another job id",
                live(2, Some((2, Apply)), false),
                event(&id(2, Apply, Some("guess")), real, 2, Ready),
                not_issued(2, Apply),
            ),
            (
                "forged: the real uid, the old default id",
                live(2, Some((2, Apply)), false),
                event(&id(2, Apply, None), real, 2, Ready),
                not_issued(2, Apply),
            ),
            (
                "the issued id at another generation",
                live(3, Some((2, Apply)), false),
                event(&apply2, real, 3, Ready),
                not_issued(2, Apply),
            ),
            (
                "no uid (an orchestrator's job)",
                live(2, Some((2, Apply)), false),
                event(&apply2, None, 2, Ready),
                Verdict::Unissued(Unissued::NoUid),
            ),
            (
                "a generation above metadata.generation",
                live(2, Some((2, Apply)), false),
                event(&apply2, real, 1 << 53, TerminationFailed),
                Verdict::Unissued(Unissued::FutureGeneration {
                    event: 1 << 53,
                    live: 2,
                }),
            ),
            (
                "another object of the same name",
                live(2, Some((2, Apply)), false),
                event(&apply2, Some(other.as_str()), 2, Ready),
                Verdict::OtherObject,
            ),
            (
                "Terminated with the apply job's id",
                live(2, Some((2, Apply)), false),
                event(&apply2, real, 2, Terminated),
                Verdict::Unissued(Unissued::WrongPhase {
                    phase: "Terminated",
                    action: "apply",
                }),
            ),
            (
                "an apply job's late Ready after the delete was issued",
                live(2, Some((2, Delete)), true),
                event(&apply2, real, 2, Ready),
                not_issued(2, Delete),
            ),
            (
                "Terminated of the delete job on a live object (delete never issued)",
                live(2, Some((2, Apply)), false),
                event(&delete2, real, 2, Terminated),
                not_issued(2, Apply),
            ),
            (
                "older helmq: the default id of the current generation",
                live(2, None, false),
                event(&id(2, Apply, None), real, 2, Deploying),
                Verdict::Answers(Apply),
            ),
            (
                "older helmq, being deleted: the default delete id",
                live(2, None, true),
                event(&id(2, Delete, None), real, 2, Terminated),
                Verdict::Answers(Delete),
            ),
            (
                "older helmq: the default id of an earlier generation",
                live(2, None, false),
                event(&id(1, Apply, None), real, 1, Ready),
                not_issued(2, Apply),
            ),
            (
                "older helmq, not being deleted: the default delete id",
                live(2, None, false),
                event(&id(2, Delete, None), real, 2, Terminated),
                not_issued(2, Apply),
            ),
            (
                "older helmq: an empty job id (its producer's own events)",
                live(2, None, false),
                event("", real, 2, Failed),
                not_issued(2, Apply),
            ),
        ];
        for (name, component, event, want) in cases {
            assert_eq!(answers_issued(&component, &event), want, "{name}");
        }
    }
}
