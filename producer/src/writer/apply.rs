//! The writer's decision as a pure function: [`apply`] turns the current status and one
//! [`StatusEvent`] into the status to write, or `None` when the event is stale.
//!
//! Never regress: the status remembers the position `(generation, order)` of the last event
//! applied (`handlerStatus.eventGeneration/eventOrder`); an event at or below it, or for a
//! generation older than `observedGeneration`, is dropped. One exception ([`outranks`]): within
//! one job, its success outranks a start of any attempt.

use helmq_schemas::component::{ComponentStatus, DRIFTED_CONDITION, HandlerStatus, Phase};
use helmq_schemas::event::{DriftReport, JobAction, Position, Stage, StatusEvent, StatusPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What to write for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// The whole new status.
    pub status: ComponentStatus,
    /// `Terminated`: remove our finalizer (when the Component is being deleted and the event
    /// answers the delete job issued for it, [`super::issued::answers_issued`]).
    pub remove_finalizer: bool,
}

/// The position of the last event applied, if any.
pub fn stored_position(status: &ComponentStatus) -> Option<Position> {
    let h = status.handler_status.as_ref()?;
    Some(Position {
        generation: h.event_generation?,
        order: h.event_order?,
    })
}

/// Whether `event` comes after the stored one (at `stored`, which produced `current`).
///
/// Positions compare as `(generation, order)`, except within one job message: there the job's
/// success (`Ready`, `Terminated`) outranks its start (`Deploying`, `Terminating`) of any
/// attempt, both ways. A second delivery of a job that is still running (a redelivery after
/// `ack_wait`, or one a restarted server handed out again) publishes its start at a higher
/// attempt, waits for the release, and may then give the job back while the first delivery's
/// ack removes the message: nothing would ever publish above that start, and the Component
/// would show `Deploying` (or keep its finalizer) for ever.
pub fn outranks(current: &ComponentStatus, stored: Position, event: &StatusEvent) -> bool {
    let position = event.position();
    if position.generation != stored.generation || !position.order.same_job_message(stored.order) {
        return position > stored;
    }
    let success = matches!(event.phase, StatusPhase::Ready | StatusPhase::Terminated);
    let start = matches!(
        event.phase,
        StatusPhase::Deploying | StatusPhase::Terminating
    );
    let stage = position.order.stage();
    let stored_stage = stored.order.stage();
    // The stored stage tells Ready from a start but not from Failed (same stage): the phase does.
    let stored_success = match stored_stage {
        Some(Stage::End(JobAction::Apply)) => current.phase == Some(Phase::Ready),
        Some(Stage::End(JobAction::Delete)) => current.phase == Some(Phase::Terminating),
        _ => false,
    };
    let ends_stored_start =
        matches!((stored_stage, stage), (Some(Stage::Start(a)), Some(Stage::End(b))) if a == b);
    if success && ends_stored_start {
        return true;
    }
    let starts_stored_end =
        matches!((stage, stored_stage), (Some(Stage::Start(a)), Some(Stage::End(b))) if a == b);
    if start && stored_success && starts_stored_end {
        return false;
    }
    position > stored
}

/// The status after `event`, or `None` when `event` is stale. `handler` goes into
/// `claimedBy`.
pub fn apply(current: &ComponentStatus, event: &StatusEvent, handler: &str) -> Option<StatusPatch> {
    let position = event.position();
    let stored = stored_position(current);
    if stored.is_some_and(|stored| !outranks(current, stored, event)) {
        return None;
    }
    // Kept monotonic: a success applied over a later attempt's start is stored at that start's
    // order with the success's rank, so it still reads as the job's success and never goes back.
    let position = match stored {
        Some(stored) if stored > position => Position {
            order: stored.order.with_stage_of(position.order),
            ..stored
        },
        _ => position,
    };
    if current
        .observed_generation
        .is_some_and(|observed| position.generation < observed)
    {
        return None;
    }
    let generation = event.component.generation;
    let at = Time(event.at);
    let mut status = current.clone();
    status.phase = Some(match event.phase {
        StatusPhase::Claimed => Phase::Claimed,
        StatusPhase::Deploying => Phase::Deploying,
        StatusPhase::Ready => Phase::Ready,
        StatusPhase::Failed => Phase::Failed,
        StatusPhase::Terminating | StatusPhase::Terminated => Phase::Terminating,
        StatusPhase::TerminationFailed => Phase::TerminationFailed,
    });
    status.message = Some(event.message.clone());
    if event.phase == StatusPhase::Claimed || status.claimed_by.is_none() {
        // A claim whose `Claimed` event was lost still shows who claimed it.
        status.claimed_by = Some(handler.to_owned());
        status.claimed_at = Some(at.clone());
    }
    if matches!(
        event.phase,
        StatusPhase::Ready | StatusPhase::Failed | StatusPhase::TerminationFailed
    ) {
        status.observed_generation = Some(generation);
    }
    let (ready, progressing, degraded, reason) = conditions_for(event.phase);
    for (type_, value) in [
        ("Ready", ready),
        ("Progressing", progressing),
        ("Degraded", degraded),
    ] {
        set_condition(
            &mut status.conditions,
            type_,
            Some(value),
            reason,
            &event.message,
            generation,
            &at,
        );
    }
    if let Some(report) = event.release.as_ref().and_then(|r| r.drift.as_ref()) {
        set_drifted(&mut status.conditions, report, event, &at);
    }
    let mut record = status.handler_status.take().unwrap_or_default();
    record_outcome(&mut record, event, &at);
    record.event_generation = Some(position.generation);
    record.event_order = Some(position.order);
    status.handler_status = Some(record);
    Some(StatusPatch {
        status,
        remove_finalizer: event.phase == StatusPhase::Terminated,
    })
}

/// The `Drifted` condition after a drift check that reported `report`: `True` while drift
/// stands (reported, or its correction failed), `Unknown` when the check could not compare.
fn set_drifted(
    conditions: &mut Vec<Condition>,
    report: &DriftReport,
    event: &StatusEvent,
    at: &Time,
) {
    let (drifted, reason) = match (report.failed, report.drifted, report.corrected) {
        (true, 0, _) => (None, "DriftCheckFailed"),
        (true, ..) => (Some(true), "DriftCorrectionFailed"),
        (false, 0, _) => (Some(false), "NoDrift"),
        (false, _, false) => (Some(true), "DriftDetected"),
        (false, _, true) => (Some(false), "DriftCorrected"),
    };
    set_condition(
        conditions,
        DRIFTED_CONDITION,
        drifted,
        reason,
        &event.message,
        event.component.generation,
        at,
    );
}

/// What `event` adds to the release record: the release, when it was deployed, the attempt and
/// the refresh its outcome answers.
fn record_outcome(record: &mut HandlerStatus, event: &StatusEvent, at: &Time) {
    if let Some(release) = &event.release {
        record.release_name = Some(release.name.clone());
        record.release_namespace = Some(release.namespace.clone());
        if release.revision.is_some() {
            record.revision = release.revision;
        }
        if release.chart_version.is_some() {
            record.chart_version = release.chart_version.clone();
        }
        if let Some(deployed) = release
            .deployed
            .as_ref()
            .filter(|_| event.phase == StatusPhase::Ready)
        {
            record.values_digest = Some(deployed.values_digest.clone());
            record.config_digest = Some(deployed.config_digest.clone());
        }
    }
    let drift_check = event.release.as_ref().is_some_and(|r| r.drift.is_some());
    if event.phase == StatusPhase::Ready && drift_check {
        // A check deploys nothing: it dates the next check.
        record.drift_checked_at = Some(at.clone());
    } else if event.phase == StatusPhase::Ready {
        record.last_deploy_time = Some(at.clone());
    }
    if matches!(event.phase, StatusPhase::Ready | StatusPhase::Failed) {
        // The outcome answers the apply job issued (the writer applies nothing else).
        record.observed_refresh = record
            .issued_job
            .as_ref()
            .filter(|job| job.action == JobAction::Apply)
            .map(|job| job.refresh);
    }
    if event.attempt > 0 {
        record.attempts = Some(event.attempt);
    }
}

/// `(Ready, Progressing, Degraded, reason)` for a phase.
fn conditions_for(phase: StatusPhase) -> (bool, bool, bool, &'static str) {
    match phase {
        StatusPhase::Claimed => (false, false, false, "Claimed"),
        StatusPhase::Deploying => (false, true, false, "Deploying"),
        StatusPhase::Ready => (true, false, false, "Deployed"),
        StatusPhase::Failed => (false, false, true, "DeploymentFailed"),
        StatusPhase::Terminating => (false, true, false, "Terminating"),
        StatusPhase::Terminated => (false, false, false, "Terminated"),
        StatusPhase::TerminationFailed => (false, false, true, "TerminationFailed"),
    }
}

/// Sets one condition (`None`: `Unknown`); `lastTransitionTime` changes only when its status
/// flips.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    value: Option<bool>,
    reason: &str,
    message: &str,
    generation: i64,
    at: &Time,
) {
    let status = match value {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
    .to_owned();
    let fresh = Condition {
        type_: type_.to_owned(),
        status: status.clone(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: Some(generation),
        last_transition_time: at.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let last_transition_time = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                at.clone()
            };
            *existing = Condition {
                last_transition_time,
                ..fresh
            };
        }
        None => conditions.push(fresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::event::{ComponentRef, ReleaseInfo};
    use jiff::Timestamp;

    fn event(generation: i64, phase: StatusPhase, attempt: u32, secs: i64) -> StatusEvent {
        StatusEvent::new(
            "job",
            ComponentRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: Some("6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4".into()),
                generation,
            },
            phase,
            format!("{phase:?}"),
            attempt,
            "worker-1",
            Timestamp::from_second(1_700_000_000 + secs).unwrap(),
        )
    }

    fn release(revision: i64) -> ReleaseInfo {
        ReleaseInfo {
            name: "web".into(),
            namespace: "apps".into(),
            revision: Some(revision),
            chart_version: Some("18.2.4".into()),
            helm_status: Some("deployed".into()),
            deployed: None,
            drift: None,
        }
    }

    fn run(events: &[StatusEvent]) -> (ComponentStatus, Vec<bool>) {
        let mut status = ComponentStatus::default();
        let mut applied = Vec::new();
        for e in events {
            match apply(&status, e, "helm") {
                Some(patch) => {
                    status = patch.status;
                    applied.push(true);
                }
                None => applied.push(false),
            }
        }
        (status, applied)
    }

    fn condition<'a>(status: &'a ComponentStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn checked(report: DriftReport) -> ReleaseInfo {
        ReleaseInfo {
            revision: None,
            drift: Some(report),
            ..release(1)
        }
    }

    #[test]
    fn a_drift_check_sets_drifted_and_dates_the_next_check_but_deploys_nothing() {
        let deployed = event(1, StatusPhase::Ready, 1, 2).with_release(release(1));
        let found = DriftReport {
            checked: 3,
            drifted: 1,
            ..DriftReport::default()
        };
        let (status, applied) = run(&[
            deployed.clone(),
            event(1, StatusPhase::Ready, 1, 30)
                .for_job_sequence(2)
                .with_release(checked(found.clone())),
        ]);
        assert_eq!(applied, [true, true]);
        let record = status.handler_status.clone().unwrap();
        assert_eq!(record.revision, Some(1), "a check is no revision");
        assert_eq!(record.last_deploy_time, Some(Time(deployed.at)));
        assert!(record.drift_checked_at.is_some_and(|t| t.0 > deployed.at));
        let drifted = condition(&status, DRIFTED_CONDITION);
        assert_eq!(
            (drifted.status.as_str(), drifted.reason.as_str()),
            ("True", "DriftDetected")
        );
        assert_eq!(status.phase, Some(Phase::Ready));
        for (report, want) in [
            (
                DriftReport {
                    corrected: true,
                    ..found.clone()
                },
                ("False", "DriftCorrected"),
            ),
            (
                DriftReport {
                    failed: true,
                    ..found.clone()
                },
                ("True", "DriftCorrectionFailed"),
            ),
            (
                DriftReport {
                    failed: true,
                    ..DriftReport::default()
                },
                ("Unknown", "DriftCheckFailed"),
            ),
            (DriftReport::default(), ("False", "NoDrift")),
        ] {
            let (status, _) =
                run(&[event(1, StatusPhase::Ready, 1, 2).with_release(checked(report))]);
            let c = condition(&status, DRIFTED_CONDITION);
            assert_eq!((c.status.as_str(), c.reason.as_str()), want);
        }
        // A deploy leaves the condition as the last check set it.
        let (status, _) = run(&[deployed]);
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.type_ != DRIFTED_CONDITION)
        );
    }

    #[test]
    fn claimed_sets_claimed_by_and_claimed_at() {
        let (status, _) = run(&[event(1, StatusPhase::Claimed, 0, 0)]);
        assert_eq!(status.phase, Some(Phase::Claimed));
        assert_eq!(status.claimed_by.as_deref(), Some("helm"));
        assert!(status.claimed_at.is_some());
        assert_eq!(status.observed_generation, None);
        assert_eq!(condition(&status, "Ready").status, "False");
        assert_eq!(condition(&status, "Ready").reason, "Claimed");
    }

    #[test]
    fn ready_sets_observed_generation_conditions_and_release_record() {
        let (status, applied) = run(&[
            event(1, StatusPhase::Claimed, 0, 0),
            event(1, StatusPhase::Deploying, 1, 1),
            event(1, StatusPhase::Ready, 1, 2).with_release(release(1)),
        ]);
        assert_eq!(applied, [true, true, true]);
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.observed_generation, Some(1));
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Deployed")
        );
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(condition(&status, "Progressing").status, "False");
        let h = status.handler_status.unwrap();
        assert_eq!(h.release_name.as_deref(), Some("web"));
        assert_eq!(h.release_namespace.as_deref(), Some("apps"));
        assert_eq!(h.revision, Some(1));
        assert_eq!(h.chart_version.as_deref(), Some("18.2.4"));
        assert!(h.last_deploy_time.is_some());
        assert_eq!(h.attempts, Some(1));
        assert_eq!(h.event_generation, Some(1));
    }

    #[test]
    fn last_transition_time_changes_only_when_the_status_flips() {
        let (first, _) = run(&[event(1, StatusPhase::Deploying, 1, 10)]);
        let before = condition(&first, "Ready").last_transition_time.clone();
        // Ready stays False through a retry: its transition time stays.
        let second = apply(&first, &event(1, StatusPhase::Deploying, 2, 20), "helm").unwrap();
        assert_eq!(
            condition(&second.status, "Ready").last_transition_time,
            before
        );
        let third = apply(&second.status, &event(1, StatusPhase::Ready, 2, 30), "helm").unwrap();
        assert_ne!(
            condition(&third.status, "Ready").last_transition_time,
            before
        );
    }

    #[test]
    fn stale_events_are_dropped() {
        let cases: &[(&str, Vec<StatusEvent>, Vec<bool>)] = &[
            (
                "older generation after newer",
                vec![
                    event(2, StatusPhase::Ready, 1, 5),
                    event(1, StatusPhase::Ready, 1, 1),
                ],
                vec![true, false],
            ),
            (
                "Deploying after Ready of the same generation",
                vec![
                    event(1, StatusPhase::Ready, 1, 5),
                    event(1, StatusPhase::Deploying, 1, 1),
                ],
                vec![true, false],
            ),
            (
                "the same event twice",
                vec![
                    event(1, StatusPhase::Deploying, 1, 1),
                    event(1, StatusPhase::Deploying, 1, 1),
                ],
                vec![true, false],
            ),
            (
                "earlier attempt after a later one",
                vec![
                    event(1, StatusPhase::Deploying, 3, 5),
                    event(1, StatusPhase::Failed, 2, 1),
                ],
                vec![true, false],
            ),
            (
                "a later attempt's start after the job's success",
                vec![
                    event(1, StatusPhase::Ready, 1, 5),
                    event(1, StatusPhase::Deploying, 2, 6),
                ],
                vec![true, false],
            ),
            (
                "the job's success after a later attempt's start",
                vec![
                    event(1, StatusPhase::Deploying, 2, 5),
                    event(1, StatusPhase::Ready, 1, 6),
                    event(1, StatusPhase::Deploying, 2, 7),
                    event(1, StatusPhase::Deploying, 3, 8),
                    event(1, StatusPhase::Ready, 3, 9),
                ],
                vec![true, true, false, false, true],
            ),
            (
                "a later attempt's start after a failure is newer",
                vec![
                    event(1, StatusPhase::Failed, 1, 5),
                    event(1, StatusPhase::Deploying, 2, 6),
                ],
                vec![true, true],
            ),
            (
                "a failure does not outrank a later attempt's start",
                vec![
                    event(1, StatusPhase::Deploying, 2, 5),
                    event(1, StatusPhase::Failed, 1, 6),
                ],
                vec![true, false],
            ),
            (
                "Terminated after a later attempt's Terminating",
                vec![
                    event(1, StatusPhase::Terminating, 2, 5),
                    event(1, StatusPhase::Terminated, 1, 6),
                ],
                vec![true, true],
            ),
            (
                "a success of another job message does not outrank",
                vec![
                    event(1, StatusPhase::Deploying, 2, 5).for_job_sequence(9),
                    event(1, StatusPhase::Ready, 1, 6).for_job_sequence(8),
                ],
                vec![true, false],
            ),
            (
                "apply phase after deletion started",
                vec![
                    event(1, StatusPhase::Terminating, 1, 5),
                    event(1, StatusPhase::Ready, 9, 1),
                ],
                vec![true, false],
            ),
            (
                "Claimed after Deploying",
                vec![
                    event(1, StatusPhase::Deploying, 1, 5),
                    event(1, StatusPhase::Claimed, 0, 1),
                ],
                vec![true, false],
            ),
            (
                "newer generation after older is applied",
                vec![
                    event(1, StatusPhase::Ready, 1, 1),
                    event(2, StatusPhase::Deploying, 1, 5),
                ],
                vec![true, true],
            ),
        ];
        for (name, events, want) in cases {
            let (_, applied) = run(events);
            assert_eq!(&applied, want, "{name}");
        }
        // The stored position never goes back, also where a success outranks a later start.
        let mut status = ComponentStatus::default();
        let mut last = None;
        for e in [
            event(1, StatusPhase::Deploying, 2, 5),
            event(1, StatusPhase::Ready, 1, 6),
        ] {
            status = apply(&status, &e, "helm").unwrap().status;
            let now = stored_position(&status);
            assert!(now > last, "{now:?} after {last:?}");
            last = now;
        }
        assert_eq!(status.phase, Some(Phase::Ready));
    }

    #[test]
    fn an_event_older_than_observed_generation_is_stale_without_a_stored_position() {
        let status = ComponentStatus {
            observed_generation: Some(3),
            ..Default::default()
        };
        assert!(apply(&status, &event(2, StatusPhase::Ready, 1, 1), "helm").is_none());
        assert!(apply(&status, &event(3, StatusPhase::Deploying, 1, 1), "helm").is_some());
    }

    #[test]
    fn deletion_phases() {
        let (status, _) = run(&[
            event(1, StatusPhase::Ready, 1, 1).with_release(release(1)),
            event(1, StatusPhase::Terminating, 1, 2),
        ]);
        assert_eq!(status.phase, Some(Phase::Terminating));
        let terminated = apply(&status, &event(1, StatusPhase::Terminated, 1, 3), "helm").unwrap();
        assert!(terminated.remove_finalizer);
        assert_eq!(terminated.status.phase, Some(Phase::Terminating));
        let failed = apply(
            &status,
            &event(1, StatusPhase::TerminationFailed, 1, 3),
            "helm",
        )
        .unwrap();
        assert!(!failed.remove_finalizer);
        assert_eq!(failed.status.phase, Some(Phase::TerminationFailed));
        assert_eq!(condition(&failed.status, "Degraded").status, "True");
        // The release record survives the deletion phases.
        assert_eq!(
            failed
                .status
                .handler_status
                .unwrap()
                .release_name
                .as_deref(),
            Some("web")
        );
    }

    #[test]
    fn failed_sets_degraded_and_observed_generation() {
        let (status, _) = run(&[event(4, StatusPhase::Failed, 0, 1)]);
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(condition(&status, "Degraded").reason, "DeploymentFailed");
        assert_eq!(status.claimed_by.as_deref(), Some("helm"));
    }
}
