//! The worker's decisions as pure functions: how a Helm failure is classified, how long to wait
//! before a retry, whether a job still matches the latest intent of its Component, what to do
//! after an attempt (the allowlist is in [`crate::allowlist`]).

use std::time::Duration;

use backon::BackoffBuilder as _;
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

/// Rendering and validation errors: the chart and values cannot work, whatever else the text
/// says (a template parse error can mention `unexpected EOF`).
const RENDERING: &[&str] = &[
    "parse error",
    "template:",
    "yaml parse error",
    "yaml: line",
    "unable to build kubernetes objects from release manifest",
    "values don't meet the specifications of the schema",
    "is not a valid chart",
    "exists and cannot be imported into the current release",
    "chart requires kubeversion",
    "invalid chart reference",
    "unknown flag",
];

/// The API server refused the job's account (RBAC): only a change to its grants helps. Checked
/// first, since the refused object's name can be any word.
const FORBIDDEN: &[&str] = &[" is forbidden: user "];

/// Texts that mean "try again later": the cluster, the network or another operation.
const TRANSIENT: &[&str] = &[
    "connection refused",
    "connection reset",
    "i/o timeout",
    "context deadline exceeded",
    "timed out waiting for the condition",
    "another operation (install/upgrade/rollback) is in progress",
    "kubernetes cluster unreachable",
    "tls handshake timeout",
    "no such host",
    "eof",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
    "too many requests",
    "etcdserver",
    "the server is currently unable to handle the request",
    "http2: client connection lost",
];

/// Chart or version missing; checked after [`TRANSIENT`], since a 503 while fetching an index
/// also says `failed to fetch`.
const MISSING_CHART: &[&str] = &[
    "not found in",
    "failed to fetch",
    "404 not found",
    "no chart name found",
    "no chart version found",
];

/// Classifies a failed Helm command by its exit code and stderr. Anything not known to be
/// permanent is transient: the attempt budget bounds it.
pub fn classify(exit_code: Option<i32>, stderr: &str) -> Failure {
    if exit_code.is_none() {
        // Killed by a signal (OOM, timeout): nothing about the job itself.
        return Failure::Transient;
    }
    // "X is not a valid chart repository or cannot be reached" is about the repository.
    let text = stderr
        .to_lowercase()
        .replace("is not a valid chart repository", "chart repository");
    if FORBIDDEN.iter().chain(RENDERING).any(|t| text.contains(t)) {
        return Failure::Permanent;
    }
    if TRANSIENT.iter().any(|t| text.contains(t)) || has_5xx(&text) {
        return Failure::Transient;
    }
    if MISSING_CHART.iter().any(|t| text.contains(t)) {
        return Failure::Permanent;
    }
    Failure::Transient
}

/// kubectl's texts for an object that does not exist (a registry Secret) or that the worker may
/// not read or delete (RBAC): only a change to the cluster helps, not a retry.
const KUBECTL_PERMANENT: &[&str] = &[
    "error from server (notfound)",
    "error from server (forbidden)",
];

/// Classifies a failed kubectl command (`get secret` of a registry login, `delete namespace`) by
/// its exit code and stderr, never with Helm's table: a missing Secret or an object the worker
/// may not touch is permanent; anything else (the API server unreachable, overloaded or
/// failing, a conflict, expired credentials) is transient. The permanent texts are checked
/// first since the object's name, which is in them, can be any word.
pub fn classify_kubectl(exit_code: Option<i32>, stderr: &str) -> Failure {
    if exit_code.is_none() {
        return Failure::Transient;
    }
    let text = stderr.to_lowercase();
    if KUBECTL_PERMANENT.iter().any(|t| text.contains(t)) {
        Failure::Permanent
    } else {
        Failure::Transient
    }
}

/// `status code 5xx` / `: 5xx ` in an HTTP error from a repository or registry.
fn has_5xx(text: &str) -> bool {
    text.match_indices("status code").any(|(i, m)| {
        text[i + m.len()..]
            .trim_start_matches([':', ' '])
            .starts_with('5')
    })
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
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_max_times(attempt.max(1) as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build().last().unwrap_or(self.min).min(self.max)
    }
}

/// What a job does, ordered inside one Component: a later generation wins, and at the same
/// generation a delete (deletion does not bump the generation) wins over an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// `metadata.generation`.
    pub generation: i64,
    /// Apply, or delete (which orders after apply).
    pub action: JobAction,
}

impl Position {
    /// The position of a job.
    pub fn of(job: &JobEvent) -> Position {
        Position {
            generation: job.component.generation,
            action: job.action,
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
}

impl Intent {
    /// The intent of a job that just started.
    pub fn running(job: &JobEvent) -> Intent {
        Intent {
            generation: job.component.generation,
            action: job.action,
            job_id: job.id.clone(),
            outcome: Outcome::Running,
            last_status: None,
            runs: 0,
        }
    }

    /// Its position.
    pub fn position(&self) -> Position {
        Position {
            generation: self.generation,
            action: self.action,
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
        by: Position,
    },
    /// The same intent already succeeded: publish its terminal status again and ack.
    AlreadyDone(Box<StatusEvent>),
}

/// Compares a job with the latest intent. A failed intent is run again: a replayed dead letter
/// must be able to retry the same generation.
pub fn decide(job: Position, intent: Option<&Intent>) -> Decision {
    let Some(intent) = intent else {
        return Decision::Run;
    };
    let latest = intent.position();
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
pub fn records(job: Position, live: Option<&Intent>) -> bool {
    live.is_none_or(|i| job > i.position() || (job == i.position() && i.outcome == Outcome::Failed))
}

/// The intent a job is measured against, from the object's live intent and the tombstone of its
/// end: whichever is newer, the tombstone at equal positions (it is the finished one).
pub fn latest<'a>(live: Option<&'a Intent>, tombstone: Option<&'a Intent>) -> Option<&'a Intent> {
    match (live, tombstone) {
        (Some(live), Some(tombstone)) if live.position() > tombstone.position() => Some(live),
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
    fn helm_failures_are_classified_by_their_stderr() {
        let cases: &[(Option<i32>, &str, Failure)] = &[
            (
                Some(1),
                r#"Error: chart "nginx" version "9.9.9" not found in https://charts.example.com repository"#,
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: failed to fetch https://charts.example.com/nginx-1.0.0.tgz : 404 Not Found",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: parse error at (nginx/templates/deployment.yaml:12): unexpected EOF",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: looks like \"https://x.io\" is not a valid chart repository or cannot be reached: failed to fetch https://x.io/index.yaml : 404 Not Found",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: template: nginx/templates/svc.yaml:3:4: executing \"x\" at <.Values.x>: nil pointer",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: YAML parse error on nginx/templates/cm.yaml: error converting YAML to JSON",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: unable to build kubernetes objects from release manifest: resource mapping not found",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: values don't meet the specifications of the schema(s) in the following chart(s):\nnginx:\n- replicas: Invalid type",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: file '/tmp/x.tgz' is not a valid chart",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: rendered manifests contain a resource that already exists. Unable to continue with install: ConfigMap \"x\" in namespace \"y\" exists and cannot be imported into the current release",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
                Failure::Transient,
            ),
            // A tenant's account refused by RBAC, whatever the object is called.
            (
                Some(1),
                "Error: clusterrolebindings.rbac.authorization.k8s.io \"eof-timeout\" is forbidden: User \"system:serviceaccount:team-a:helmq-deployer\" cannot create resource \"clusterrolebindings\" in API group \"rbac.authorization.k8s.io\" at the cluster scope",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: query: failed to query with labels: secrets is forbidden: User \"system:serviceaccount:team-a:helmq-deployer\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-b\"",
                Failure::Permanent,
            ),
            (
                Some(1),
                "Error: INSTALLATION FAILED: context deadline exceeded",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: timed out waiting for the condition",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: looks like \"https://charts.example.com\" is not a valid chart repository or cannot be reached: Get \"https://charts.example.com/index.yaml\": dial tcp: lookup charts.example.com: no such host",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: Get \"https://charts.example.com/index.yaml\": net/http: TLS handshake timeout",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: failed to fetch https://charts.example.com/index.yaml : 503 Service Unavailable",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: unexpected status code 502 from registry",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error: read tcp 10.0.0.2:5000->10.0.0.1:443: i/o timeout",
                Failure::Transient,
            ),
            (Some(1), "Error: unexpected EOF", Failure::Transient),
            (
                Some(1),
                "something nobody has seen before",
                Failure::Transient,
            ),
            (None, "", Failure::Transient),
        ];
        for (code, stderr, want) in cases {
            assert_eq!(classify(*code, stderr), *want, "{stderr}");
        }
    }

    #[test]
    fn kubectl_failures_are_classified_by_their_stderr() {
        let cases: &[(Option<i32>, &str, Failure)] = &[
            (
                Some(1),
                r#"Error from server (Forbidden): namespaces "apps" is forbidden: User "system:serviceaccount:helmq:worker" cannot delete resource "namespaces" in API group "" in the namespace "apps""#,
                Failure::Permanent,
            ),
            (
                Some(1),
                r#"Error from server (Conflict): Operation cannot be fulfilled on namespaces "apps": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."#,
                Failure::Transient,
            ),
            (
                Some(1),
                "Error from server (Timeout): the server was unable to return a response in the time allotted, but may still be processing the request (delete namespaces apps)",
                Failure::Transient,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): secrets "registry-creds" not found"#,
                Failure::Permanent,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): namespaces "nope" not found"#,
                Failure::Permanent,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): secrets "eof" not found"#,
                Failure::Permanent,
            ),
            (
                Some(1),
                r#"Error from server (Forbidden): secrets "registry-creds" is forbidden: User "system:serviceaccount:helmq:worker" cannot get resource "secrets" in API group "" in the namespace "apps""#,
                Failure::Permanent,
            ),
            (
                Some(1),
                "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?",
                Failure::Transient,
            ),
            (
                Some(1),
                "Unable to connect to the server: dial tcp: lookup api.cluster.local: no such host",
                Failure::Transient,
            ),
            (
                Some(1),
                "Unable to connect to the server: net/http: TLS handshake timeout",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error from server (ServiceUnavailable): the server is currently unable to handle the request",
                Failure::Transient,
            ),
            (
                Some(1),
                "Error from server (InternalError): an error on the server (\"\") has prevented the request from succeeding",
                Failure::Transient,
            ),
            (
                Some(1),
                "error: You must be logged in to the server (Unauthorized)",
                Failure::Transient,
            ),
            (
                Some(1),
                "something nobody has seen before",
                Failure::Transient,
            ),
            (None, "", Failure::Transient),
        ];
        for (code, stderr, want) in cases {
            assert_eq!(classify_kubectl(*code, stderr), *want, "{stderr}");
        }
    }

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

    fn job(generation: i64, action: JobAction) -> Position {
        Position { generation, action }
    }

    #[test]
    fn a_delete_orders_after_the_apply_of_its_generation_and_before_the_next() {
        use JobAction::{Apply, Delete};
        let order = [job(1, Apply), job(1, Delete), job(2, Apply), job(2, Delete)];
        for pair in order.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
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
