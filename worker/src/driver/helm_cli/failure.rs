//! What a failed helm or kubectl run means, read once from its readable stderr
//! ([`readable_stderr`](super::output::readable_stderr)) where the process ran: its class
//! (whether a retry can help), its [`Cause`] when it is a common failure, and its [`Answer`]
//! when it says the release or object is missing, exists or is forbidden. `MemoryDriver` reads
//! the failures it simulates with the same functions.
//!
//! Pure functions over text, with a table test of the messages helm and kubectl print.

use crate::failure::{Answer, Cause, HelmFailure};
use crate::policy::Failure;

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
    ANOTHER_OPERATION,
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

/// Helm's text (lower case) for a release another install, upgrade or rollback holds.
const ANOTHER_OPERATION: &str = "another operation (install/upgrade/rollback) is in progress";

/// Helm's text (lower case) when `helm install` finds a release of that name: Helm 4 says
/// "cannot reuse a name that is still in use", Helm 3 "cannot re-use ...".
const NAME_IN_USE: &str = "a name that is still in use";

/// Chart or version missing; checked after [`TRANSIENT`], since a 503 while fetching an index
/// also says `failed to fetch`.
const MISSING_CHART: &[&str] = &[
    "not found in",
    "failed to fetch",
    "404 not found",
    "no chart name found",
    "no chart version found",
];

/// kubectl's texts for an object that does not exist (a registry Secret) or that the worker may
/// not read or delete (RBAC): only a change to the cluster helps, not a retry.
const KUBECTL_PERMANENT: &[&str] = &[
    "error from server (notfound)",
    "error from server (forbidden)",
];

/// A failed helm run with exit code `exit_code` (`None`: killed by a signal) and readable
/// stderr `text`.
pub(crate) fn helm_failure(exit_code: Option<i32>, text: String) -> HelmFailure {
    HelmFailure {
        class: helm_class(exit_code, &text),
        cause: helm_cause(&text),
        answer: helm_answer(&text),
        text,
    }
}

/// A `helm test` whose tests ran and one failed (or ran out of time), with helm's readable
/// stderr `text`: permanent, since trying again runs the same tests against the same revision
/// (only `config.remediation`'s retries try the deploy again).
pub(crate) fn test_failure(text: String) -> HelmFailure {
    HelmFailure {
        class: Failure::Permanent,
        cause: Some(Cause::TestFailed),
        answer: helm_answer(&text),
        text,
    }
}

/// A failed kubectl run (`get secret` of a registry login, `delete namespace`, ...), read with
/// kubectl's own table, never Helm's.
pub(crate) fn kubectl_failure(exit_code: Option<i32>, text: String) -> HelmFailure {
    HelmFailure {
        class: kubectl_class(exit_code, &text),
        cause: forbidden(&text),
        answer: kubectl_answer(&text),
        text,
    }
}

/// Whether a failed helm run can succeed when tried again. Anything not known to be permanent
/// is transient: the attempt budget bounds it.
fn helm_class(exit_code: Option<i32>, stderr: &str) -> Failure {
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

/// Whether a failed kubectl run can succeed when tried again: a missing object or one the
/// worker may not touch is permanent; anything else (the API server unreachable, overloaded or
/// failing, a conflict, expired credentials) is transient. The permanent texts are checked
/// first since the object's name, which is in them, can be any word.
fn kubectl_class(exit_code: Option<i32>, stderr: &str) -> Failure {
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

/// Helm's answer about the release: only that it does not exist.
fn helm_answer(text: &str) -> Option<Answer> {
    text.to_lowercase()
        .contains("release: not found")
        .then_some(Answer::NotFound)
}

/// kubectl's answer about the object (`Error from server (NotFound): namespaces "x" not
/// found`).
fn kubectl_answer(text: &str) -> Option<Answer> {
    if text.contains("(NotFound)") {
        Some(Answer::NotFound)
    } else if text.contains("AlreadyExists") {
        Some(Answer::AlreadyExists)
    } else if text.contains("(Forbidden)") {
        Some(Answer::Forbidden)
    } else {
        None
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

/// The common failure a helm stderr tells of, most specific first; `None` when it is none of
/// them.
fn helm_cause(text: &str) -> Option<Cause> {
    let lower = text.to_lowercase();
    if let Some(cause) = forbidden(text).or_else(|| owned_elsewhere(text, &lower)) {
        return Some(cause);
    }
    if lower.contains(ANOTHER_OPERATION) {
        return Some(Cause::AnotherOperation);
    }
    if lower.contains(NAME_IN_USE) {
        return Some(Cause::NameInUse);
    }
    let not_ready = not_ready(text);
    if !not_ready.is_empty() {
        return Some(Cause::WaitTimeout(not_ready));
    }
    if lower.contains("timed out waiting for the condition") {
        return Some(Cause::WaitTimeout(Vec::new()));
    }
    missing(&lower)
}

/// RBAC refused the account: `... is forbidden: User "u" cannot <what>`.
fn forbidden(text: &str) -> Option<Cause> {
    let (user, rest) = after(text, "is forbidden: User \"")?.split_once('"')?;
    let cannot = rest.trim_start().strip_prefix("cannot ")?;
    let cannot = cannot.lines().next().unwrap_or_default();
    Some(Cause::Forbidden {
        user: user.to_owned(),
        cannot: cannot.trim_end_matches(['.', ' ']).to_owned(),
    })
}

/// An object of the chart that exists and belongs to another release, or to none.
fn owned_elsewhere(text: &str, lower: &str) -> Option<Cause> {
    if !lower.contains("exists and cannot be imported into the current release") {
        return None;
    }
    let object = between(text, "unable to continue with install: ", " exists")
        .or_else(|| between(text, "unable to continue with update: ", " exists"))
        .unwrap_or("an object of the chart");
    let release = after(text, "\"meta.helm.sh/release-name\" must equal \"")
        .and_then(|rest| between(rest, "current value is \"", "\""))
        .map(str::to_owned);
    Some(Cause::OwnedElsewhere {
        object: object.to_owned(),
        release,
    })
}

/// The resources Helm's wait named as not ready (`resource Kind/namespace/name not ready`), as
/// `Kind namespace/name`.
fn not_ready(text: &str) -> Vec<String> {
    text.match_indices("resource ")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let (resource, tail) = rest.split_once(' ')?;
            if !tail.starts_with("not ready") {
                return None;
            }
            let mut parts = resource.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(kind), Some(namespace), Some(name)) => {
                    Some(format!("{kind} {namespace}/{name}"))
                }
                (Some(kind), Some(name), None) => Some(format!("{kind} {name}")),
                _ => None,
            }
        })
        .collect()
}

/// A repository that cannot be read, or a chart or version it does not have (`lower`: the
/// text in lower case).
fn missing(lower: &str) -> Option<Cause> {
    let fetch_failed = lower.contains("failed to fetch");
    if lower.contains("is not a valid chart repository or cannot be reached")
        || (fetch_failed && lower.contains("index.yaml"))
    {
        return Some(Cause::RepositoryUnreachable);
    }
    if (lower.contains("not found in") && lower.contains("repository"))
        || lower.contains("no chart version found")
        || lower.contains("no chart name found")
        || (fetch_failed && lower.contains("404 not found"))
    {
        return Some(Cause::ChartNotFound);
    }
    None
}

/// The text after the first `start`, up to the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    Some(&rest[..rest.find(end)?])
}

/// The text after the first `start`, to the end.
fn after<'a>(text: &'a str, start: &str) -> Option<&'a str> {
    Some(&text[text.find(start)? + start.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Failure::{Permanent, Transient};

    // Helm v4.2.3's own messages, captured on the rig (`$HELMQ_RIG/helm` against a real
    // kube-apiserver 1.32), as the worker reports them.
    const VERSION_NOT_FOUND: &str =
        r#"Error: chart "demo" version "9.9.9" not found in http://127.0.0.1:18765 repository"#;
    const CHART_NOT_FOUND: &str =
        r#"Error: chart "nosuch" version "0.1.0" not found in http://127.0.0.1:18765 repository"#;
    const REPOSITORY_404: &str = r#"Error: looks like "http://127.0.0.1:18765/nope" is not a valid chart repository or cannot be reached: failed to fetch http://127.0.0.1:18765/nope/index.yaml : 404 File not found"#;
    const WAIT_TIMEOUT: &str = "Error: UPGRADE FAILED: resource Deployment/cap/stuck-web not ready. status: InProgress, message: Available: 0/2\ncontext deadline exceeded";
    const NOT_HELMS: &str = r#"Error: unable to continue with install: ConfigMap "taken-config" in namespace "cap" exists and cannot be imported into the current release: invalid ownership metadata; label validation error: missing key "app.kubernetes.io/managed-by": must be set to "Helm"; annotation validation error: missing key "meta.helm.sh/release-name": must be set to "taken"; annotation validation error: missing key "meta.helm.sh/release-namespace": must be set to "cap""#;
    const OTHER_RELEASES: &str = r#"Error: unable to continue with update: Service "web" in namespace "apps" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key "meta.helm.sh/release-name" must equal "web": current value is "shop"; annotation validation error: key "meta.helm.sh/release-namespace" must equal "apps": current value is "apps""#;
    const FORBIDDEN_LIST: &str = r#"Error: query: failed to query with labels: secrets is forbidden: User "system:serviceaccount:cap:nobody" cannot list resource "secrets" in API group "" in the namespace "cap""#;

    fn forbidden_to(user: &str, cannot: &str) -> Option<Cause> {
        Some(Cause::Forbidden {
            user: user.into(),
            cannot: cannot.into(),
        })
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table
    fn helm_failures_are_read_into_their_class_and_cause() {
        let tenant = "system:serviceaccount:team-a:helmq-deployer";
        let cases: Vec<(Option<i32>, &str, Failure, Option<Cause>)> = vec![
            (
                Some(1),
                r#"Error: chart "nginx" version "9.9.9" not found in https://charts.example.com repository"#,
                Permanent,
                Some(Cause::ChartNotFound),
            ),
            (
                Some(1),
                "Error: failed to fetch https://charts.example.com/nginx-1.0.0.tgz : 404 Not Found",
                Permanent,
                Some(Cause::ChartNotFound),
            ),
            (
                Some(1),
                "Error: parse error at (nginx/templates/deployment.yaml:12): unexpected EOF",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: looks like \"https://x.io\" is not a valid chart repository or cannot be reached: failed to fetch https://x.io/index.yaml : 404 Not Found",
                Permanent,
                Some(Cause::RepositoryUnreachable),
            ),
            (
                Some(1),
                "Error: template: nginx/templates/svc.yaml:3:4: executing \"x\" at <.Values.x>: nil pointer",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: template: demo/templates/cm.yaml:3: unexpected EOF",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: YAML parse error on nginx/templates/cm.yaml: error converting YAML to JSON",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: unable to build kubernetes objects from release manifest: resource mapping not found",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: values don't meet the specifications of the schema(s) in the following chart(s):\nnginx:\n- replicas: Invalid type",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: file '/tmp/x.tgz' is not a valid chart",
                Permanent,
                None,
            ),
            (
                Some(1),
                "Error: rendered manifests contain a resource that already exists. Unable to continue with install: ConfigMap \"x\" in namespace \"y\" exists and cannot be imported into the current release",
                Permanent,
                Some(Cause::OwnedElsewhere {
                    object: "an object of the chart".into(),
                    release: None,
                }),
            ),
            (
                Some(1),
                NOT_HELMS,
                Permanent,
                Some(Cause::OwnedElsewhere {
                    object: r#"ConfigMap "taken-config" in namespace "cap""#.into(),
                    release: None,
                }),
            ),
            (
                Some(1),
                OTHER_RELEASES,
                Permanent,
                Some(Cause::OwnedElsewhere {
                    object: r#"Service "web" in namespace "apps""#.into(),
                    release: Some("shop".into()),
                }),
            ),
            (
                Some(1),
                "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
                Transient,
                Some(Cause::AnotherOperation),
            ),
            (
                Some(1),
                "Error: INSTALLATION FAILED: release name check failed: cannot reuse a name that is still in use",
                Transient,
                Some(Cause::NameInUse),
            ),
            // Helm 3's wording.
            (
                Some(1),
                "Error: INSTALLATION FAILED: cannot re-use a name that is still in use",
                Transient,
                Some(Cause::NameInUse),
            ),
            // A tenant's account refused by RBAC, whatever the object is called.
            (
                Some(1),
                "Error: clusterrolebindings.rbac.authorization.k8s.io \"eof-timeout\" is forbidden: User \"system:serviceaccount:team-a:helmq-deployer\" cannot create resource \"clusterrolebindings\" in API group \"rbac.authorization.k8s.io\" at the cluster scope",
                Permanent,
                forbidden_to(
                    tenant,
                    r#"create resource "clusterrolebindings" in API group "rbac.authorization.k8s.io" at the cluster scope"#,
                ),
            ),
            (
                Some(1),
                "Error: query: failed to query with labels: secrets is forbidden: User \"system:serviceaccount:team-a:helmq-deployer\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-b\"",
                Permanent,
                forbidden_to(
                    tenant,
                    r#"list resource "secrets" in API group "" in the namespace "team-b""#,
                ),
            ),
            (
                Some(1),
                FORBIDDEN_LIST,
                Permanent,
                forbidden_to(
                    "system:serviceaccount:cap:nobody",
                    r#"list resource "secrets" in API group "" in the namespace "cap""#,
                ),
            ),
            (
                Some(1),
                "Error: INSTALLATION FAILED: context deadline exceeded",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error: UPGRADE FAILED: timed out waiting for the condition",
                Transient,
                Some(Cause::WaitTimeout(Vec::new())),
            ),
            (
                Some(1),
                "Error: timed out waiting for the condition",
                Transient,
                Some(Cause::WaitTimeout(Vec::new())),
            ),
            (
                Some(1),
                WAIT_TIMEOUT,
                Transient,
                Some(Cause::WaitTimeout(vec!["Deployment cap/stuck-web".into()])),
            ),
            (
                Some(1),
                "Error: looks like \"https://charts.example.com\" is not a valid chart repository or cannot be reached: Get \"https://charts.example.com/index.yaml\": dial tcp: lookup charts.example.com: no such host",
                Transient,
                Some(Cause::RepositoryUnreachable),
            ),
            (
                Some(1),
                REPOSITORY_404,
                Permanent,
                Some(Cause::RepositoryUnreachable),
            ),
            (
                Some(1),
                VERSION_NOT_FOUND,
                Permanent,
                Some(Cause::ChartNotFound),
            ),
            (
                Some(1),
                CHART_NOT_FOUND,
                Permanent,
                Some(Cause::ChartNotFound),
            ),
            (
                Some(1),
                "Error: Get \"https://charts.example.com/index.yaml\": net/http: TLS handshake timeout",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error: failed to fetch https://charts.example.com/index.yaml : 503 Service Unavailable",
                Transient,
                Some(Cause::RepositoryUnreachable),
            ),
            (
                Some(1),
                "Error: unexpected status code 502 from registry",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error: read tcp 10.0.0.2:5000->10.0.0.1:443: i/o timeout",
                Transient,
                None,
            ),
            (Some(1), "Error: unexpected EOF", Transient, None),
            (Some(1), "something nobody has seen before", Transient, None),
            (None, "", Transient, None),
            // Killed by a signal: transient whatever it printed, and still what it says.
            (
                None,
                "Error: timed out waiting for the condition",
                Transient,
                Some(Cause::WaitTimeout(Vec::new())),
            ),
        ];
        for (code, stderr, class, cause) in cases {
            let failure = helm_failure(code, stderr.to_owned());
            assert_eq!((failure.class, &failure.cause), (class, &cause), "{stderr}");
            assert_eq!(failure.text, stderr);
            assert_eq!(failure.to_string(), stderr);
        }
    }

    #[test]
    fn raw_stderr_is_read_after_it_is_made_readable() {
        use super::super::output::readable_stderr;
        let wait_timeout = "level=WARN msg=\"upgrade failed\" name=web error=\"resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/1\\ncontext deadline exceeded\"\n\
            level=INFO msg=\"waiting for resources\" count=3\n\
            Error: UPGRADE FAILED: resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/1\ncontext deadline exceeded\n";
        // (raw helm stderr, class, cause): the samples of `readable_stderr`'s tests.
        let cases: &[(&[u8], Failure, Option<Cause>)] = &[
            (
                wait_timeout.as_bytes(),
                Transient,
                Some(Cause::WaitTimeout(vec!["Deployment apps/web".into()])),
            ),
            (
                b"time=2026-11-29T12:00:00Z level=DEBUG msg=x\nFlag --atomic has been deprecated, use --rollback-on-failure\nError: boom\n",
                Transient,
                None,
            ),
            (
                b"walk.go:74: found symbolic link\nError: INSTALLATION FAILED: x\nhint: y\n",
                Transient,
                None,
            ),
            (b"level=ERROR msg=\"killed\"\n", Transient, None),
            (
                b"\x1b[31mError:\x1b[0m bad\tthing\x07\x00\r\nnext\rline\x1b]\x7f",
                Transient,
                None,
            ),
            (b"", Transient, None),
        ];
        for (raw, class, cause) in cases {
            let failure = helm_failure(Some(1), readable_stderr(raw, 0, &[]));
            assert_eq!((failure.class, &failure.cause), (*class, cause), "{raw:?}");
        }
        // kubectl's, with its own table.
        let forbidden = readable_stderr(
            b"Warning: deprecated\nError from server (Forbidden): nope\n",
            0,
            &[],
        );
        let failure = kubectl_failure(Some(1), forbidden);
        assert_eq!((failure.class, failure.cause), (Permanent, None));
    }

    #[test]
    fn kubectl_failures_are_read_into_their_class_and_cause() {
        let worker = "system:serviceaccount:helmq:worker";
        let cases: &[(Option<i32>, &str, Failure, Option<Cause>)] = &[
            (
                Some(1),
                r#"Error from server (Forbidden): namespaces "apps" is forbidden: User "system:serviceaccount:helmq:worker" cannot delete resource "namespaces" in API group "" in the namespace "apps""#,
                Permanent,
                forbidden_to(
                    worker,
                    r#"delete resource "namespaces" in API group "" in the namespace "apps""#,
                ),
            ),
            // kubectl's texts are not read with Helm's table: `eof` in a name is no network
            // error.
            (
                Some(1),
                r#"Error from server (Forbidden): namespaces "eof" is forbidden: User "system:serviceaccount:helmq:worker" cannot delete resource "namespaces" in API group "" in the namespace "eof""#,
                Permanent,
                forbidden_to(
                    worker,
                    r#"delete resource "namespaces" in API group "" in the namespace "eof""#,
                ),
            ),
            (
                Some(1),
                r#"Error from server (Conflict): Operation cannot be fulfilled on namespaces "apps": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."#,
                Transient,
                None,
            ),
            (
                Some(1),
                "Error from server (Timeout): the server was unable to return a response in the time allotted, but may still be processing the request (delete namespaces apps)",
                Transient,
                None,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): secrets "registry-creds" not found"#,
                Permanent,
                None,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): secrets "creds" not found"#,
                Permanent,
                None,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): namespaces "nope" not found"#,
                Permanent,
                None,
            ),
            (
                Some(1),
                r#"Error from server (NotFound): secrets "eof" not found"#,
                Permanent,
                None,
            ),
            (
                Some(1),
                r#"Error from server (Forbidden): secrets "registry-creds" is forbidden: User "system:serviceaccount:helmq:worker" cannot get resource "secrets" in API group "" in the namespace "apps""#,
                Permanent,
                forbidden_to(
                    worker,
                    r#"get resource "secrets" in API group "" in the namespace "apps""#,
                ),
            ),
            (
                Some(1),
                "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?",
                Transient,
                None,
            ),
            (
                Some(1),
                "Unable to connect to the server: dial tcp: lookup api.cluster.local: no such host",
                Transient,
                None,
            ),
            (
                Some(1),
                "Unable to connect to the server: net/http: TLS handshake timeout",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error from server (ServiceUnavailable): the server is currently unable to handle the request",
                Transient,
                None,
            ),
            (
                Some(1),
                "Error from server (InternalError): an error on the server (\"\") has prevented the request from succeeding",
                Transient,
                None,
            ),
            (
                Some(1),
                "error: You must be logged in to the server (Unauthorized)",
                Transient,
                None,
            ),
            (Some(1), "something nobody has seen before", Transient, None),
            (None, "", Transient, None),
        ];
        for (code, stderr, class, cause) in cases {
            let failure = kubectl_failure(*code, (*stderr).to_owned());
            assert_eq!((failure.class, &failure.cause), (*class, cause), "{stderr}");
        }
    }

    #[test]
    fn what_a_failure_says_of_its_object_is_read_with_its_tools_words() {
        use Answer::{AlreadyExists, Forbidden, NotFound};
        let helm: &[(&str, Option<Answer>)] = &[
            ("Error: release: not found", Some(NotFound)),
            (
                "Error: uninstall: Release not loaded: web: release: not found",
                Some(NotFound),
            ),
            ("Error: Kubernetes cluster unreachable", None),
            // Only kubectl's words for a missing object are kubectl's.
            (
                r#"Error from server (NotFound): secrets "x" not found"#,
                None,
            ),
        ];
        for (stderr, answer) in helm {
            assert_eq!(
                helm_failure(Some(1), (*stderr).into()).answer,
                *answer,
                "{stderr}"
            );
        }
        let kubectl: &[(&str, Option<Answer>)] = &[
            (
                r#"Error from server (NotFound): namespaces "nope" not found"#,
                Some(NotFound),
            ),
            (
                r#"Error from server (AlreadyExists): namespaces "apps" already exists"#,
                Some(AlreadyExists),
            ),
            (
                r#"Error from server (Forbidden): namespaces is forbidden: User "u" cannot create resource "namespaces" in API group "" at the cluster scope"#,
                Some(Forbidden),
            ),
            // Only helm's words for a missing release are helm's.
            ("release: not found", None),
            (
                "Unable to connect to the server: net/http: TLS handshake timeout",
                None,
            ),
        ];
        for (stderr, answer) in kubectl {
            let failure = kubectl_failure(Some(1), (*stderr).into());
            assert_eq!(failure.answer, *answer, "{stderr}");
        }
    }
}
