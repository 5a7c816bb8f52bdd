//! Admission: whether a delivered payload is a job this worker takes. It must decode, come on
//! its Component's subject, and pass the allowlist and the timeout limit; otherwise it is
//! [`Refused`], with the dead-letter reason and whom (if anyone) to tell
//! ([`rejection_status`]).

use helmq_schemas::event::{JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::job_subject;

use crate::allowlist::Refusal;
use crate::context::Delivery;
use crate::failure::Cause;
use crate::settings::Settings;

/// Why a delivered job is refused; each holds the dead-letter reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refused {
    /// The payload is not a valid job: nobody is told. What it names cannot be believed (it
    /// may name another tenant's Component, at any generation).
    Undecodable(String),
    /// The subject is not the one of the Component the payload names: nobody is told (that
    /// may be another tenant's, and the publisher may not speak for it).
    Subject(String),
    /// A valid job on its own subject that this worker refuses (allowlist, timeout limit): the
    /// Component is told (`Failed` or `TerminationFailed`, answering the job's id).
    Policy(Box<JobEvent>, Rejection),
}

/// Why this worker refuses a valid job on its own subject.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Rejection {
    /// The allowlist refuses its chart source or release namespace.
    #[error(transparent)]
    Allowlist(#[from] Refusal),
    /// It asks for a longer timeout than this worker allows.
    #[error("timeoutSeconds {asked} is over this worker's limit of {max} (--max-timeout)")]
    Timeout {
        /// `timeoutSeconds` of the job.
        asked: u64,
        /// `--max-timeout`, in seconds.
        max: u64,
    },
}

impl Refused {
    /// The dead-letter reason.
    pub(crate) fn reason(&self) -> String {
        match self {
            Refused::Undecodable(reason) | Refused::Subject(reason) => reason.clone(),
            Refused::Policy(_, rejection) => rejection.to_string(),
        }
    }

    /// The common failure it is, for the advice the Component is told: a source or namespace
    /// off the allowlist (its other refusals are about the source's form, not the list).
    pub(crate) fn cause(&self) -> Option<Cause> {
        match self {
            Refused::Policy(
                _,
                Rejection::Allowlist(Refusal::NotAllowed { .. } | Refusal::Namespace { .. }),
            ) => Some(Cause::NotAllowed),
            _ => None,
        }
    }

    /// The job whose Component is told of the refusal, if any.
    pub(crate) fn told(&self) -> Option<&JobEvent> {
        match self {
            Refused::Policy(job, _) => Some(job),
            Refused::Undecodable(_) | Refused::Subject(_) => None,
        }
    }
}

/// Decodes a payload, checks that it came on its Component's subject (per-namespace publish
/// permissions in NATS then bound what a publisher can name), and checks it against the
/// allowlist and the timeout limit.
pub(crate) fn admit(
    settings: &Settings,
    subject: &str,
    payload: &[u8],
) -> Result<JobEvent, Refused> {
    let job = JobEvent::decode(payload).map_err(|e| Refused::Undecodable(e.to_string()))?;
    check_subject(subject, &job).map_err(Refused::Subject)?;
    match allowed(settings, &job) {
        Ok(()) => Ok(job),
        Err(reason) => Err(Refused::Policy(Box::new(job), reason)),
    }
}

/// The job's subject must be `helmq.jobs.<namespace>.<name>` of the Component it names.
pub(crate) fn check_subject(subject: &str, job: &JobEvent) -> Result<(), String> {
    let (namespace, name) = (&job.component.namespace, &job.component.name);
    helmq_schemas::subject::check_own_subject(
        "job",
        subject,
        &job_subject(namespace, name),
        (namespace, name),
    )
}

/// The `Failed` (or `TerminationFailed` for a delete) status of a refused `job` in this
/// delivery, answering the job's id.
pub(crate) fn rejection_status(
    job: &JobEvent,
    reason: &str,
    delivery: Delivery,
    worker: &str,
) -> StatusEvent {
    let phase = match job.action {
        JobAction::Delete => StatusPhase::TerminationFailed,
        JobAction::Apply => StatusPhase::Failed,
    };
    StatusEvent::new(
        job.id.clone(),
        job.component.clone(),
        phase,
        format!("job rejected: {reason}"),
        delivery.attempt,
        worker,
        jiff::Timestamp::now(),
    )
    .for_job_sequence(delivery.sequence)
}

/// The allowlist and the timeout limit.
fn allowed(settings: &Settings, job: &JobEvent) -> Result<(), Rejection> {
    settings.allowlist.check(&job.config)?;
    let max = settings.max_timeout.as_secs();
    if job.timeout_seconds > max {
        return Err(Rejection::Timeout {
            asked: job.timeout_seconds,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use helmq_schemas::event::ComponentRef;

    /// An apply job for `team-a/web.v2` at generation 1, timeout 60 s.
    fn web_job() -> JobEvent {
        JobEvent::new(
            JobAction::Apply,
            ComponentRef {
                namespace: "team-a".into(),
                name: "web.v2".into(),
                uid: None,
                generation: 1,
            },
            helmq_schemas::HelmConfig::parse(
                Some(&serde_json::json!({
                    "repository": {"url": "https://charts.example.com", "name": "x"},
                    "chart": {"name": "nginx", "version": "1.0.0"}
                })),
                "team-a",
                "web.v2",
            )
            .unwrap(),
            60,
            jiff::Timestamp::UNIX_EPOCH,
        )
    }

    #[test]
    fn bad_input_tells_a_component_only_when_it_is_a_valid_job_on_its_own_subject() {
        let mut settings = Settings::new("w");
        settings.max_timeout = Duration::from_secs(30);
        let own = "helmq.jobs.team-a.web_2Ev2";
        let mut undecodable = serde_json::to_value(web_job()).unwrap();
        undecodable["schema"] = serde_json::json!("helmq.job/v9");
        undecodable["component"] = serde_json::json!(
            {"namespace": "team-b", "name": "db", "uid": "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4", "generation": 1_i64 << 53}
        );
        let mut bad_generation = serde_json::to_value(web_job()).unwrap();
        bad_generation["component"]["generation"] = serde_json::json!((1_i64 << 53) + 1);
        let mut elsewhere = web_job();
        elsewhere.component.namespace = "team-b".into();
        let mut delete = web_job();
        delete.action = JobAction::Delete;
        let payload = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
        // (name, payload on team-a's own subject, refused as, the phase told)
        let cases: Vec<(&str, Vec<u8>, &str, Option<StatusPhase>)> = vec![
            (
                "another schema naming team-b/db at 2^53, on team-a's subject",
                payload(&undecodable),
                "undecodable",
                None,
            ),
            (
                "a generation over 2^53 on its own subject",
                payload(&bad_generation),
                "undecodable",
                None,
            ),
            ("not JSON", b"{".to_vec(), "undecodable", None),
            (
                "a valid job naming team-b, on team-a's subject",
                elsewhere.encode(),
                "subject",
                None,
            ),
            (
                "a valid apply over the timeout limit",
                web_job().encode(),
                "policy",
                Some(StatusPhase::Failed),
            ),
            (
                "a valid delete over the timeout limit",
                delete.encode(),
                "policy",
                Some(StatusPhase::TerminationFailed),
            ),
        ];
        let delivery = Delivery {
            attempt: 1,
            sequence: 9,
        };
        for (name, payload, want, phase) in cases {
            let refused = admit(&settings, own, &payload).unwrap_err();
            let kind = match &refused {
                Refused::Undecodable(_) => "undecodable",
                Refused::Subject(_) => "subject",
                Refused::Policy(..) => "policy",
            };
            assert_eq!(kind, want, "{name}: {}", refused.reason());
            let told = refused
                .told()
                .map(|job| rejection_status(job, "r", delivery, "w"));
            assert_eq!(told.as_ref().map(|s| s.phase), phase, "{name}");
            if let Some(status) = told {
                let job = JobEvent::decode(&payload).unwrap();
                assert_eq!(status.job_id, job.id, "{name}: answers the job's id");
                assert_eq!(status.component, job.component, "{name}");
                assert_eq!(status.job_sequence, 9, "{name}");
            }
        }
        settings.max_timeout = Duration::from_secs(60);
        assert_eq!(admit(&settings, own, &web_job().encode()), Ok(web_job()));
    }

    #[test]
    fn a_source_or_namespace_off_the_allowlist_is_refused_with_its_typed_cause() {
        let own = "helmq.jobs.team-a.web_2Ev2";
        let mut settings = Settings::new("w");
        let refused = |settings: &Settings| admit(settings, own, &web_job().encode()).unwrap_err();
        let only = |sources: &[&str], namespaces: &[&str]| {
            crate::allowlist::Allowlist::new(Some(sources), Some(namespaces)).unwrap()
        };
        settings.allowlist = only(&["https://charts.other.example"], &["team-a"]);
        let source = refused(&settings);
        assert_eq!(source.cause(), Some(Cause::NotAllowed));
        assert!(
            source
                .reason()
                .contains("is not allowed (allowed sources: ")
        );
        settings.allowlist = only(&["https://charts.example.com"], &["apps"]);
        let namespace = refused(&settings);
        assert_eq!(namespace.cause(), Some(Cause::NotAllowed));
        assert!(
            namespace
                .reason()
                .contains("is not allowed (allowed namespaces: ")
        );
        // The timeout limit is a refusal too, with no advice of its own.
        settings.allowlist = crate::allowlist::Allowlist::any();
        settings.max_timeout = std::time::Duration::from_secs(30);
        let timeout = refused(&settings);
        assert_eq!(timeout.cause(), None);
        assert_eq!(
            timeout.reason(),
            "timeoutSeconds 60 is over this worker's limit of 30 (--max-timeout)"
        );
    }

    #[test]
    fn a_job_must_come_on_its_components_subject() {
        let mut job = web_job();
        let cases = [
            ("helmq.jobs.team-a.web_2Ev2", Ok(())),
            // Another namespace's subject (what a per-namespace NATS user may publish to).
            (
                "helmq.jobs.team-b.web_2Ev2",
                Err("subject helmq.jobs.team-b.web_2Ev2,"),
            ),
            (
                "helmq.jobs.team-a.web",
                Err("subject helmq.jobs.team-a.web,"),
            ),
            (
                "helmq.jobs.team-a.web.v2",
                Err("subject helmq.jobs.team-a.web.v2,"),
            ),
            (
                "helmq.jobs.team-a.web_2ev2",
                Err("subject helmq.jobs.team-a.web_2ev2,"),
            ),
        ];
        for (subject, want) in cases {
            let got = check_subject(subject, &job);
            match (&got, want) {
                (Ok(()), Ok(())) => {}
                (Err(reason), Err(part)) => {
                    assert!(reason.contains(part), "{subject}: {reason}");
                    assert!(
                        reason.contains("component team-a/web.v2")
                            && reason.contains("not on helmq.jobs.team-a.web_2Ev2"),
                        "{reason}"
                    );
                }
                _ => panic!("{subject}: {got:?}"),
            }
        }
        // A payload naming another namespace, on the publisher's own subject.
        job.component.namespace = "team-b".into();
        let reason = check_subject("helmq.jobs.team-a.web_2Ev2", &job).unwrap_err();
        assert_eq!(
            reason,
            "job for component team-b/web.v2 was published on subject helmq.jobs.team-a.web_2Ev2, not on helmq.jobs.team-b.web_2Ev2: a job must come on its component's subject"
        );
    }
}
