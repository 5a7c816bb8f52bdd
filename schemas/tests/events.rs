//! `JobEvent` and `StatusEvent` on the wire: round trips, dedupe ids, order keys, and every
//! kind of bad payload rejected with an error that says what is wrong.

use helmq_schemas::HelmConfig;
use helmq_schemas::event::{
    ComponentRef, DriftReport, DriftedObject, EventError, JobAction, JobEvent, MAX_DRIFT_ITEMS,
    MAX_EVENT_BYTES, ReleaseInfo, StatusEvent, StatusPhase, default_job_id, issued_job_id,
};
use serde_json::{Value, json};

fn config() -> HelmConfig {
    HelmConfig::parse(
        Some(&json!({
            "repository": {"url": "https://repo.broadcom.com/bitnami-files", "name": "bitnami"},
            "chart": {"name": "nginx", "version": "18.2.4"},
            "values": {"service": {"type": "ClusterIP"}, "replicaCount": 1}
        })),
        "default",
        "test-nginx",
    )
    .unwrap()
}

/// A uid as Kubernetes writes one.
const UID: &str = "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4";

fn component(uid: Option<&str>, generation: i64) -> ComponentRef {
    ComponentRef {
        namespace: "default".into(),
        name: "test-nginx".into(),
        uid: uid.map(str::to_owned),
        generation,
    }
}

fn at() -> jiff::Timestamp {
    "2026-11-24T10:00:00Z".parse().unwrap()
}

fn job_json() -> Value {
    serde_json::to_value(JobEvent::new(
        JobAction::Apply,
        component(Some(UID), 4),
        config(),
        600,
        at(),
    ))
    .unwrap()
}

#[test]
fn a_job_round_trips_and_its_id_is_its_dedupe_id() {
    let job = JobEvent::new(
        JobAction::Apply,
        component(Some(UID), 4),
        config(),
        600,
        at(),
    );
    assert_eq!(job.id, "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:4:apply");
    assert_eq!(
        job.dedupe_id(),
        "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:4:apply"
    );
    let decoded = JobEvent::decode(&job.encode()).unwrap();
    assert_eq!(decoded, job);
    let wire: Value = serde_json::from_slice(&job.encode()).unwrap();
    assert_eq!(wire["schema"], "helmq.job/v1");
    assert_eq!(wire["action"], "apply");
    assert_eq!(wire["requestedAt"], "2026-11-24T10:00:00Z");
    assert_eq!(wire["config"]["releaseName"], "default-test-nginx");
}

#[test]
fn orchestrator_jobs_without_uid_dedupe_on_namespace_and_name() {
    let job = JobEvent::new(JobAction::Delete, component(None, 2), config(), 300, at());
    assert_eq!(job.dedupe_id(), "default/test-nginx:2:delete");
    // A job published by hand may omit the timeout and the uid.
    let mut wire = serde_json::to_value(&job).unwrap();
    wire.as_object_mut().unwrap().remove("timeoutSeconds");
    let decoded = JobEvent::decode(&serde_json::to_vec(&wire).unwrap()).unwrap();
    assert_eq!(decoded.timeout_seconds, 300);
    assert_eq!(decoded.component.uid, None);
}

#[test]
fn bad_job_payloads_are_rejected_with_the_reason() {
    let with = |mutate: &dyn Fn(&mut Value)| {
        let mut v = job_json();
        mutate(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not json",
            b"{not json".to_vec(),
            "malformed helmq.job/v1 payload: not JSON: key must be a string at line 1 column 2",
        ),
        (
            "empty",
            Vec::new(),
            "malformed helmq.job/v1 payload: not JSON: EOF while parsing a value at line 1 column 0",
        ),
        (
            "array",
            b"[1,2]".to_vec(),
            "malformed helmq.job/v1 payload: expected a JSON object, got array",
        ),
        (
            "no schema",
            with(&|v| {
                v.as_object_mut().unwrap().remove("schema");
            }),
            "payload has no schema field (expected helmq.job/v1)",
        ),
        (
            "future schema",
            with(&|v| v["schema"] = json!("helmq.job/v2")),
            r#"unknown schema "helmq.job/v2" (this build reads helmq.job/v1)"#,
        ),
        (
            "status schema",
            with(&|v| v["schema"] = json!("helmq.status/v1")),
            r#"unknown schema "helmq.status/v1" (this build reads helmq.job/v1)"#,
        ),
        (
            "numeric schema",
            with(&|v| v["schema"] = json!(1)),
            "malformed helmq.job/v1 payload: schema must be a string, got number",
        ),
        (
            "no id",
            with(&|v| {
                v.as_object_mut().unwrap().remove("id");
            }),
            "malformed helmq.job/v1 payload: missing field `id`",
        ),
        (
            "blank id",
            with(&|v| v["id"] = json!(" ")),
            "malformed helmq.job/v1 payload: id is required",
        ),
        (
            "bad action",
            with(&|v| v["action"] = json!("rollback")),
            "malformed helmq.job/v1 payload: unknown variant `rollback`, expected `apply` or `delete`",
        ),
        (
            "typo field",
            with(&|v| v["timeout"] = json!(5)),
            "malformed helmq.job/v1 payload: unknown field `timeout`, expected one of `schema`, `id`, `action`, `component`, `config`, `timeoutSeconds`, `requestedAt`, `refresh`, `deployed`, `driftCheck`",
        ),
        (
            "no name",
            with(&|v| v["component"]["name"] = json!("")),
            "malformed helmq.job/v1 payload: component.name is required",
        ),
        (
            "no namespace",
            with(&|v| v["component"]["namespace"] = json!("")),
            "malformed helmq.job/v1 payload: component.namespace is required",
        ),
        (
            "negative generation",
            with(&|v| v["component"]["generation"] = json!(-1)),
            "malformed helmq.job/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got -1",
        ),
        (
            "namespace with a space",
            with(&|v| v["component"]["namespace"] = json!("a b")),
            r#"malformed helmq.job/v1 payload: component.namespace must be a DNS label (lowercase letters, digits and '-', at most 63 characters), got "a b""#,
        ),
        (
            "name of 1.4 KiB",
            with(&|v| v["component"]["name"] = json!("n".repeat(1400))),
            r#"malformed helmq.job/v1 payload: component.name must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters), got "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn…""#,
        ),
        (
            "uid with CR/LF",
            with(&|v| v["component"]["uid"] = json!("u\r\nX: y")),
            r#"malformed helmq.job/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "u\r\nX: y""#,
        ),
        (
            "uid that is no UUID",
            with(&|v| v["component"]["uid"] = json!("uid-1")),
            r#"malformed helmq.job/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "uid-1""#,
        ),
        (
            "uid in braces",
            with(&|v| v["component"]["uid"] = json!("{6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4}")),
            r#"malformed helmq.job/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "{6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4}""#,
        ),
        (
            "uid with a non-hex digit",
            with(&|v| v["component"]["uid"] = json!("6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3cg")),
            r#"malformed helmq.job/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3cg""#,
        ),
        (
            "uid with a hyphen out of place",
            with(&|v| v["component"]["uid"] = json!("6f1c2b1e3-d4a-4b5c-8d6e-7f8091a2b3c4")),
            r#"malformed helmq.job/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "6f1c2b1e3-d4a-4b5c-8d6e-7f8091a2b3c4""#,
        ),
        (
            "id with CR/LF",
            with(&|v| v["id"] = json!("j\r\nX: y")),
            r#"malformed helmq.job/v1 payload: id must not contain control characters, got "j\r\nX: y""#,
        ),
        (
            "id too long",
            with(&|v| v["id"] = json!("i".repeat(300))),
            "malformed helmq.job/v1 payload: id is 300 bytes, over the 256 byte limit",
        ),
        (
            "timeout near 2^64",
            with(&|v| v["timeoutSeconds"] = json!(u64::MAX - 1)),
            "malformed helmq.job/v1 payload: timeoutSeconds must be between 1 and 86400, got 18446744073709551614",
        ),
        (
            "timeout 0",
            with(&|v| v["timeoutSeconds"] = json!(0)),
            "malformed helmq.job/v1 payload: timeoutSeconds must be between 1 and 86400, got 0",
        ),
        (
            "generation 0",
            with(&|v| v["component"]["generation"] = json!(0)),
            "malformed helmq.job/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 0",
        ),
        (
            "generation 2^53 + 1",
            with(&|v| v["component"]["generation"] = json!(9_007_199_254_740_993_i64)),
            "malformed helmq.job/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 9007199254740993",
        ),
        (
            "generation 2^63 - 1",
            with(&|v| v["component"]["generation"] = json!(i64::MAX)),
            "malformed helmq.job/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 9223372036854775807",
        ),
        (
            "bad time",
            with(&|v| v["requestedAt"] = json!("yesterday")),
            "malformed helmq.job/v1 payload: failed to parse four digit integer as year: invalid digit, expected 0-9 but got y",
        ),
        (
            "config as string",
            with(&|v| v["config"] = json!("releaseName: x")),
            "invalid helm config: config must be an object, got string",
        ),
        (
            "no config",
            with(&|v| {
                v.as_object_mut().unwrap().remove("config");
            }),
            "malformed helmq.job/v1 payload: missing field `config`",
        ),
        (
            "bad component",
            with(&|v| v["component"] = json!("default/web")),
            "malformed helmq.job/v1 payload: component: invalid type: string \"default/web\", expected struct ComponentRef",
        ),
        (
            "invalid config",
            with(&|v| v["config"]["releaseName"] = json!("")),
            "invalid helm config: releaseName is required",
        ),
        (
            "unknown source type",
            with(&|v| v["config"]["source"]["type"] = json!("git")),
            "invalid helm config: unknown source type: git (available types: http, oci)",
        ),
    ];
    for (name, payload, want) in cases {
        let err = JobEvent::decode(&payload).unwrap_err();
        assert_eq!(err.to_string(), want, "case {name}");
    }
}

#[test]
fn oversized_payloads_are_rejected_before_parsing() {
    let payload = vec![b' '; MAX_EVENT_BYTES + 1];
    assert_eq!(
        JobEvent::decode(&payload).unwrap_err(),
        EventError::TooLarge {
            size: MAX_EVENT_BYTES + 1,
            limit: MAX_EVENT_BYTES
        }
    );
}

#[test]
fn an_issued_job_is_deduplicated_on_its_own_id_and_any_other_id_on_the_default_one() {
    let target = component(Some(UID), 4);
    let mut job = JobEvent::new(JobAction::Apply, target.clone(), config(), 600, at());
    let default = "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:4:apply";
    assert_eq!(default_job_id(&target, JobAction::Apply), default);
    let issued = issued_job_id(&target, JobAction::Apply, "n0nce");
    assert_eq!(issued, format!("{default}:n0nce"));
    let cases = [
        ("the default id", default.to_owned(), default.to_owned()),
        ("an issued id", issued.clone(), issued.clone()),
        ("an orchestrator's own id", "job-1".into(), default.into()),
        (
            "an issued id of another generation",
            issued_job_id(&component(Some(UID), 5), JobAction::Apply, "n"),
            default.into(),
        ),
        (
            "an issued id of the other action",
            issued_job_id(&target, JobAction::Delete, "n"),
            default.into(),
        ),
        (
            "the default id with a suffix",
            format!("{default}x"),
            default.into(),
        ),
    ];
    for (name, id, want) in cases {
        job.id = id;
        assert_eq!(job.dedupe_id(), want, "{name}");
    }
}

fn status(phase: StatusPhase, attempt: u32, generation: i64) -> StatusEvent {
    StatusEvent::new(
        "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:4:apply",
        component(Some(UID), generation),
        phase,
        "",
        attempt,
        "w-1",
        at(),
    )
}

#[test]
fn status_events_round_trip_with_their_release() {
    let event = status(StatusPhase::Ready, 1, 4).with_release(ReleaseInfo {
        name: "default-test-nginx".into(),
        namespace: "default".into(),
        revision: Some(2),
        chart_version: Some("18.2.4".into()),
        helm_status: Some("deployed".into()),
        deployed: None,
        drift: Some(DriftReport {
            checked: 3,
            objects: vec![DriftedObject {
                kind: "Deployment".into(),
                name: "web".into(),
                namespace: Some("default".into()),
                deleted: false,
                fields: vec!["/spec/replicas".into()],
            }],
            drifted: 1,
            corrected: false,
            failed: false,
        }),
    });
    assert_eq!(StatusEvent::decode(&event.encode()).unwrap(), event);
    let wire: Value = serde_json::from_slice(&event.encode()).unwrap();
    assert_eq!(wire["schema"], "helmq.status/v1");
    assert_eq!(wire["phase"], "Ready");
    assert_eq!(wire["release"]["chartVersion"], "18.2.4");
    assert_eq!(
        wire["release"]["drift"]["objects"][0]["fields"][0],
        "/spec/replicas"
    );
    // A report longer than its limit is refused where it enters.
    let mut long = event.clone();
    if let Some(report) = long.release.as_mut().and_then(|r| r.drift.as_mut()) {
        report.objects[0].fields = vec!["/a".into(); MAX_DRIFT_ITEMS + 1];
    }
    let error = StatusEvent::decode(&long.encode()).unwrap_err().to_string();
    assert!(error.contains("release.drift.objects[].fields"), "{error}");
}

#[test]
fn order_keys_never_let_an_older_event_win() {
    use StatusPhase::*;
    // Each event in this list is newer than every event before it.
    let sequence = [
        status(Claimed, 0, 1),
        status(Deploying, 1, 1),
        status(Failed, 1, 1),
        status(Deploying, 2, 1),
        status(Ready, 2, 1),
        status(Deploying, 1, 2),
        status(Ready, 1, 2),
        status(Terminating, 1, 2),
        status(TerminationFailed, 1, 2),
        status(Terminating, 2, 2),
        status(Terminated, 2, 2),
    ];
    for pair in sequence.windows(2) {
        assert!(
            pair[0].position() < pair[1].position(),
            "{:?}@{} should sort before {:?}@{}",
            pair[0].phase,
            pair[0].attempt,
            pair[1].phase,
            pair[1].attempt
        );
    }
    let ids: std::collections::HashSet<String> = sequence.iter().map(|e| e.dedupe_id()).collect();
    assert_eq!(
        ids.len(),
        sequence.len(),
        "dedupe ids must differ per event"
    );
}

#[test]
fn bad_status_payloads_are_rejected_with_the_reason() {
    let good = serde_json::to_value(status(StatusPhase::Ready, 1, 4)).unwrap();
    let with = |mutate: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        mutate(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not json",
            b"Ready".to_vec(),
            "malformed helmq.status/v1 payload: not JSON: expected value at line 1 column 1",
        ),
        (
            "job schema",
            with(&|v| v["schema"] = json!("helmq.job/v1")),
            r#"unknown schema "helmq.job/v1" (this build reads helmq.status/v1)"#,
        ),
        (
            "no schema",
            with(&|v| {
                v.as_object_mut().unwrap().remove("schema");
            }),
            "payload has no schema field (expected helmq.status/v1)",
        ),
        (
            "bad phase",
            with(&|v| v["phase"] = json!("Exploded")),
            "malformed helmq.status/v1 payload: unknown variant `Exploded`, expected one of `Claimed`, `Deploying`, `Ready`, `Failed`, `Terminating`, `Terminated`, `TerminationFailed`",
        ),
        (
            "forged order",
            with(&|v| v["order"] = json!(u64::MAX)),
            "malformed helmq.status/v1 payload: order 18446744073709551615 does not match phase Ready at attempt 1 of job sequence 0",
        ),
        (
            "forged job sequence",
            with(&|v| v["jobSequence"] = json!(7)),
            "malformed helmq.status/v1 payload: order 258 does not match phase Ready at attempt 1 of job sequence 7",
        ),
        (
            "name with a space",
            with(&|v| v["component"]["name"] = json!("a b")),
            r#"malformed helmq.status/v1 payload: component.name must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters), got "a b""#,
        ),
        (
            "uid that is no UUID",
            with(&|v| v["component"]["uid"] = json!("uid-1")),
            r#"malformed helmq.status/v1 payload: component.uid must be an RFC 4122 UUID (8-4-4-4-12 lowercase hex digits, as in metadata.uid), got "uid-1""#,
        ),
        (
            "namespace with a control character",
            with(&|v| v["component"]["namespace"] = json!("team\u{7f}a")),
            r#"malformed helmq.status/v1 payload: component.namespace must be a DNS label (lowercase letters, digits and '-', at most 63 characters), got "team\u{7f}a""#,
        ),
        (
            "generation above 2^53",
            with(&|v| v["component"]["generation"] = json!((1_i64 << 53) + 1)),
            "malformed helmq.status/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 9007199254740993",
        ),
        (
            "worker with a line break",
            with(&|v| v["worker"] = json!("w\r\nX-Evil: 1")),
            r#"malformed helmq.status/v1 payload: worker must not contain control characters, got "w\r\nX-Evil: 1""#,
        ),
        (
            "huge message",
            with(&|v| v["message"] = json!("x".repeat(9000))),
            "malformed helmq.status/v1 payload: message is 9000 bytes, over the 8192 byte limit",
        ),
        (
            "release name too long",
            with(&|v| {
                v["release"] = json!({"name": "r".repeat(54), "namespace": "default"});
            }),
            r#"malformed helmq.status/v1 payload: release.name must be a Helm release name (a DNS subdomain of at most 53 characters), got "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr""#,
        ),
        (
            "generation past 2^53",
            with(&|v| v["component"]["generation"] = json!(9_007_199_254_740_993_i64)),
            "malformed helmq.status/v1 payload: component.generation must be between 1 and 9007199254740992 (2^53), got 9007199254740993",
        ),
        (
            "no component",
            with(&|v| {
                v.as_object_mut().unwrap().remove("component");
            }),
            "malformed helmq.status/v1 payload: missing field `component`",
        ),
    ];
    for (name, payload, want) in cases {
        assert_eq!(
            StatusEvent::decode(&payload).unwrap_err().to_string(),
            want,
            "case {name}"
        );
    }
}

#[test]
fn phase_wire_names_are_the_serialized_names() {
    use StatusPhase::*;
    for phase in [
        Claimed,
        Deploying,
        Ready,
        Failed,
        Terminating,
        Terminated,
        TerminationFailed,
    ] {
        assert_eq!(
            serde_json::to_value(phase).unwrap(),
            Value::from(phase.as_str())
        );
    }
    let event = status(StatusPhase::TerminationFailed, 2, 3);
    assert_eq!(
        event.dedupe_id(),
        format!(
            "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:3:{}:TerminationFailed",
            event.order
        )
    );
}

#[test]
fn a_replayed_jobs_events_order_above_the_earlier_runs_at_any_attempt() {
    let failed_at_5 = status(StatusPhase::Failed, 5, 4).for_job_sequence(17);
    let replay_deploying = status(StatusPhase::Deploying, 1, 4).for_job_sequence(40);
    let replay_ready = status(StatusPhase::Ready, 1, 4).for_job_sequence(40);
    assert!(failed_at_5.position() < replay_deploying.position());
    assert!(replay_deploying.position() < replay_ready.position());
    // Redeliveries of one message: same sequence, later attempts above earlier ones.
    assert!(
        status(StatusPhase::Failed, 1, 4)
            .for_job_sequence(17)
            .position()
            < status(StatusPhase::Deploying, 2, 4)
                .for_job_sequence(17)
                .position()
    );
    // Deletion above any apply of the generation, whatever the sequences.
    assert!(
        status(StatusPhase::Ready, 1, 4)
            .for_job_sequence(1 << 45)
            .position()
            < status(StatusPhase::Terminating, 1, 4)
                .for_job_sequence(1)
                .position()
    );
    // Every key fits Kubernetes' int64, even at the widest sequence and attempt.
    let widest = status(StatusPhase::TerminationFailed, u32::MAX, 4).for_job_sequence(u64::MAX);
    assert!(
        i64::try_from(widest.order.get()).is_ok(),
        "{}",
        widest.order
    );
    // The wire keeps the sequence and the decoder checks the order against it.
    let wire = replay_ready.encode();
    assert_eq!(StatusEvent::decode(&wire).unwrap(), replay_ready);
    let value: Value = serde_json::from_slice(&wire).unwrap();
    assert_eq!(value["jobSequence"], 40);
}

#[test]
fn long_messages_are_cut_when_the_event_is_made() {
    let long = "é".repeat(10_000);
    let event = StatusEvent::new(
        "j",
        component(Some(UID), 1),
        StatusPhase::Failed,
        long,
        1,
        "w",
        at(),
    );
    assert!(event.message.len() <= 8192, "{}", event.message.len());
    assert!(event.message.ends_with('…'));
    assert!(StatusEvent::decode(&event.encode()).is_ok());
}
