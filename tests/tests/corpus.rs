//! A hostile corpus (issue 11): malformed, oversized and forged jobs and status events
//! published as raw bytes to the real subjects of a real nats-server, with good jobs
//! interleaved. Every good job ends `Ready` on its Component (through the real worker pool and
//! the real status writer), every bad message ends in the dead-letter stream with its own
//! reason, no worker slot is lost (the pool stays ready, nothing stays in flight) and the
//! writer keeps applying other Components' events. Helm is the in-memory driver, Kubernetes the
//! in-memory API server.

mod common;

use std::time::Duration;

use common::Pipeline;

use helmq_schemas::HelmConfig;
use helmq_schemas::component::{Component, ComponentSpec, Phase};
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::{job_subject, status_subject};
use helmq_telemetry::Readiness;
use helmq_worker::allowlist::Allowlist;
use helmq_worker::{MemoryDriver, Settings};
use serde_json::{Value, json};

const NS: &str = "default";

fn config_json(release: &str) -> Value {
    json!({
        "releaseName": release,
        "releaseNamespace": "apps",
        "source": {"type": "http",
            "repository": {"url": "https://charts.example.com/stable", "name": "example"},
            "chart": {"name": "nginx", "version": "1.2.3"}},
        "values": {"replicaCount": 1}
    })
}

fn component(name: &str) -> Component {
    let mut c = Component::new(
        name,
        ComponentSpec {
            name: name.into(),
            handler: "helm".into(),
            config: Some(config_json(name)),
            deployment_timeout: None,
            termination_timeout: None,
        },
    );
    c.metadata.namespace = Some(NS.into());
    c
}

fn job_for(c: &Component) -> JobEvent {
    let name = c.metadata.name.clone().unwrap();
    let config = HelmConfig::parse(Some(&config_json(&name)), NS, &name).unwrap();
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: NS.into(),
            name,
            uid: c.metadata.uid.clone(),
            generation: c.metadata.generation.unwrap_or(1),
        },
        config,
        30,
        jiff::Timestamp::now(),
    )
}

/// A well-formed job for Component `bad` (which does not exist in the store), as JSON to spoil.
fn job_json() -> Value {
    let config = HelmConfig::parse(Some(&config_json("bad")), NS, "bad").unwrap();
    let job = JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: NS.into(),
            name: "bad".into(),
            uid: Some(helmq_tests::build::uid("bad")),
            generation: 1,
        },
        config,
        30,
        jiff::Timestamp::now(),
    );
    serde_json::to_value(job).unwrap()
}

/// A well-formed status event for Component `bad`, as JSON to spoil.
fn status_json() -> Value {
    let event = StatusEvent::new(
        "j",
        ComponentRef {
            namespace: NS.into(),
            name: "bad".into(),
            uid: Some(helmq_tests::build::uid("bad")),
            generation: 1,
        },
        StatusPhase::Ready,
        "ready",
        1,
        "w",
        jiff::Timestamp::now(),
    );
    serde_json::to_value(event).unwrap()
}

fn spoil(base: Value, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value = base;
    change(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("deep"), |inner, _| json!({ "a": inner }))
}

/// One hostile message: where it goes, its bytes, and the start of the reason it must be
/// dead-lettered with.
struct Case {
    name: &'static str,
    subject: String,
    payload: Vec<u8>,
    reason: String,
}

fn job_case(name: &'static str, payload: Vec<u8>, reason: &str) -> Case {
    Case {
        name,
        subject: job_subject(NS, "bad"),
        payload,
        reason: reason.into(),
    }
}

fn status_case(name: &'static str, payload: Vec<u8>, reason: &str) -> Case {
    Case {
        name,
        subject: status_subject(NS, "bad"),
        payload,
        reason: reason.into(),
    }
}

fn corpus() -> Vec<Case> {
    let job = job_json;
    let status = status_json;
    let malformed_job = "malformed helmq.job/v1 payload: ";
    let malformed_status = "malformed helmq.status/v1 payload: ";
    let long_name = "n".repeat(1400);
    let mut cases = vec![
        job_case(
            "not json",
            b"{not json".to_vec(),
            &format!("{malformed_job}not JSON"),
        ),
        job_case(
            "empty",
            Vec::new(),
            &format!("{malformed_job}not JSON: EOF"),
        ),
        job_case(
            "array",
            b"[1,2]".to_vec(),
            &format!("{malformed_job}expected a JSON object, got array"),
        ),
        job_case(
            "binary",
            vec![0xff, 0x00, 0xfe, 0x0a],
            &format!("{malformed_job}not JSON"),
        ),
        job_case(
            "future schema",
            spoil(job(), |v| v["schema"] = json!("helmq.job/v9")),
            r#"unknown schema "helmq.job/v9""#,
        ),
        job_case(
            "no schema",
            spoil(job(), |v| {
                v.as_object_mut().unwrap().remove("schema");
            }),
            "payload has no schema field",
        ),
        job_case(
            "timeout near 2^64",
            spoil(job(), |v| v["timeoutSeconds"] = json!(u64::MAX - 1)),
            &format!("{malformed_job}timeoutSeconds must be between 1 and 86400"),
        ),
        job_case(
            "timeout 0",
            spoil(job(), |v| v["timeoutSeconds"] = json!(0)),
            &format!("{malformed_job}timeoutSeconds must be between 1 and 86400, got 0"),
        ),
        job_case(
            "timeout over the worker's limit",
            spoil(job(), |v| v["timeoutSeconds"] = json!(7200)),
            "timeoutSeconds 7200 is over this worker's limit of 3600 (--max-timeout)",
        ),
        job_case(
            "uid with CR/LF",
            spoil(job(), |v| v["component"]["uid"] = json!("u\r\nX-Evil: 1")),
            &format!("{malformed_job}component.uid must be"),
        ),
        job_case(
            "id with CR/LF",
            spoil(job(), |v| v["id"] = json!("j\r\nX-Evil: 1")),
            &format!("{malformed_job}id must not contain control characters"),
        ),
        job_case(
            "name with a space",
            spoil(job(), |v| v["component"]["name"] = json!("a b")),
            &format!("{malformed_job}component.name must be a DNS subdomain"),
        ),
        job_case(
            "namespace with CR/LF",
            spoil(job(), |v| v["component"]["namespace"] = json!("ns\r\n")),
            &format!("{malformed_job}component.namespace must be a DNS label"),
        ),
        Case {
            name: "name of 1.4 KiB on its own subject",
            subject: job_subject(NS, &long_name),
            payload: spoil(job(), |v| v["component"]["name"] = json!(long_name.clone())),
            reason: format!("{malformed_job}component.name must be a DNS subdomain"),
        },
        job_case(
            "uid of 200 characters",
            spoil(job(), |v| v["component"]["uid"] = json!("u".repeat(200))),
            &format!("{malformed_job}component.uid must be an RFC 4122 UUID"),
        ),
        job_case(
            "generation 2^63-1",
            spoil(job(), |v| v["component"]["generation"] = json!(i64::MAX)),
            &format!("{malformed_job}component.generation must be between 1 and 9007199254740992"),
        ),
        job_case(
            "generation 0",
            spoil(job(), |v| v["component"]["generation"] = json!(0)),
            &format!("{malformed_job}component.generation must be between 1"),
        ),
        job_case(
            "generation as a string",
            spoil(job(), |v| v["component"]["generation"] = json!("1")),
            &format!("{malformed_job}component: invalid type: string"),
        ),
        job_case(
            "invalid config",
            spoil(job(), |v| {
                v["config"].as_object_mut().unwrap().remove("releaseName");
            }),
            "invalid helm config: releaseName is required",
        ),
        job_case(
            "config as a string",
            spoil(job(), |v| v["config"] = json!("releaseName: x")),
            "invalid helm config: config must be an object",
        ),
        job_case(
            "chart source outside the allowlist",
            spoil(job(), |v| {
                v["config"]["source"]["repository"]["url"] = json!("https://evil.example.com/")
            }),
            "chart source https://evil.example.com/ is not allowed",
        ),
        job_case(
            "an allowed host as userinfo in front of another host",
            spoil(job(), |v| {
                v["config"]["source"]["repository"]["url"] =
                    json!("https://charts.example.com:x@evil.example/")
            }),
            "chart source \"https://charts.example.com:x@evil.example/\" must not carry userinfo",
        ),
        job_case(
            "a dot-dot path out of the allowed prefix",
            spoil(job(), |v| {
                v["config"]["source"]["repository"]["url"] =
                    json!("https://charts.example.com/%2e%2e/private")
            }),
            "chart source \"https://charts.example.com/%2e%2e/private\" must not hold",
        ),
        job_case(
            "namespace outside the allowlist",
            spoil(job(), |v| {
                v["config"]["releaseNamespace"] = json!("kube-system")
            }),
            "release namespace kube-system is not allowed",
        ),
        job_case(
            "values nested 200 deep",
            spoil(job(), |v| v["config"]["values"] = nested(200)),
            &format!("{malformed_job}not JSON: recursion limit exceeded"),
        ),
        job_case(
            "payload over 512 KiB",
            spoil(job(), |v| {
                v["config"]["values"] = json!({"blob": "x".repeat(530 * 1024)})
            }),
            "payload is ",
        ),
        job_case(
            "unknown field",
            spoil(job(), |v| v["timeout"] = json!(5)),
            &format!("{malformed_job}unknown field `timeout`"),
        ),
        job_case(
            "unknown action",
            spoil(job(), |v| v["action"] = json!("rollback")),
            &format!("{malformed_job}unknown variant `rollback`"),
        ),
        job_case(
            "id of 300 bytes",
            spoil(job(), |v| v["id"] = json!("i".repeat(300))),
            &format!("{malformed_job}id is 300 bytes, over the 256 byte limit"),
        ),
        job_case(
            "bad time",
            spoil(job(), |v| v["requestedAt"] = json!("yesterday")),
            &format!("{malformed_job}failed to parse four digit integer as year"),
        ),
        status_case(
            "status for a Component named `a b`",
            spoil(status(), |v| v["component"]["name"] = json!("a b")),
            &format!("{malformed_status}component.name must be a DNS subdomain"),
        ),
        Case {
            name: "job naming default/bad on another namespace's subject",
            subject: job_subject("team-b", "bad"),
            payload: serde_json::to_vec(&job()).unwrap(),
            reason: "job for component default/bad was published on subject helmq.jobs.team-b.bad, not on helmq.jobs.default.bad".into(),
        },
        Case {
            name: "status event naming default/bad on another namespace's subject",
            subject: status_subject("team-b", "bad"),
            payload: serde_json::to_vec(&status()).unwrap(),
            reason: "status event for component default/bad was published on subject helmq.status.team-b.bad, not on helmq.status.default.bad".into(),
        },
        status_case(
            "status uid that is no UUID",
            spoil(status(), |v| v["component"]["uid"] = json!("uid-1")),
            &format!("{malformed_status}component.uid must be an RFC 4122 UUID"),
        ),
        status_case(
            "status not JSON",
            b"Ready".to_vec(),
            &format!("{malformed_status}not JSON"),
        ),
        status_case(
            "status with a forged order",
            spoil(status(), |v| v["order"] = json!(u64::MAX)),
            &format!("{malformed_status}order 18446744073709551615 does not match"),
        ),
        status_case(
            "status worker with CR/LF",
            spoil(status(), |v| v["worker"] = json!("w\r\nX-Evil: 1")),
            &format!("{malformed_status}worker must not contain control characters"),
        ),
        status_case(
            "status message of 9000 bytes",
            spoil(status(), |v| v["message"] = json!("x".repeat(9000))),
            &format!("{malformed_status}message is 9000 bytes"),
        ),
        status_case(
            "status generation 2^53+1",
            spoil(status(), |v| {
                v["component"]["generation"] = json!(9_007_199_254_740_993_i64)
            }),
            &format!("{malformed_status}component.generation must be between 1 and"),
        ),
        status_case(
            "status release name of 54 characters",
            spoil(status(), |v| {
                v["release"] = json!({"name": "r".repeat(54), "namespace": "apps"})
            }),
            &format!("{malformed_status}release.name must be a Helm release name"),
        ),
    ];
    cases.retain(|c| !c.name.is_empty());
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_are_dead_lettered_and_every_good_job_still_deploys() {
    let driver = MemoryDriver::new();
    let health = Readiness::default();
    health.ready();
    let mut settings = Settings::new("corpus-worker");
    settings.concurrency = 4;
    settings.fetch_expires = Duration::from_millis(300);
    settings.allowlist =
        Allowlist::new(Some(&["https://charts.example.com/"]), Some(&["apps"])).unwrap();
    settings.health = health.clone();
    let pipeline = Pipeline::start(&driver, settings).await;
    let (js, store, metrics) = (&pipeline.js, &pipeline.store, &pipeline.metrics);

    // Good and bad interleaved: a good job, a hostile message, a good job, ...
    let cases = corpus();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut good = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let created = store.create(component(&format!("good-{i}"))).unwrap();
        js.publish(
            job_subject(NS, created.metadata.name.as_deref().unwrap()),
            job_for(&created).encode().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        good.push(created.metadata.name.clone().unwrap());
        js.publish(case.subject.clone(), case.payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("{}: not stored: {e}", case.name));
    }

    // Every good Component reaches Ready through the worker and the writer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: Vec<&String> = good
            .iter()
            .filter(|name| {
                store
                    .snapshot(NS, name)
                    .and_then(|c| c.status)
                    .and_then(|s| s.phase)
                    != Some(Phase::Ready)
            })
            .collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Ready: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every hostile message has its own dead letter with its reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = helmq_queue::dlq::list(js, usize::MAX).await.unwrap();
        if letters.len() >= cases.len() || tokio::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letters: Vec<_> = letters.into_iter().map(|l| l.letter).collect();
    for case in &cases {
        let found = letters
            .iter()
            .filter(|l| l.payload.as_ref() == case.payload.as_slice() && l.subject == case.subject)
            .collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "{}: dead letters {found:#?}", case.name);
        assert!(
            found[0].reason.starts_with(&case.reason),
            "{}: reason {:?}, wanted it to start with {:?}",
            case.name,
            found[0].reason,
            case.reason
        );
    }
    let extra: Vec<_> = letters
        .iter()
        .filter(|l| {
            !cases
                .iter()
                .any(|c| l.payload.as_ref() == c.payload.as_slice() && l.subject == c.subject)
        })
        .map(|l| (&l.subject, &l.reason))
        .collect();
    assert!(
        extra.is_empty(),
        "dead letters of no hostile message: {extra:#?}"
    );

    // No slot was lost, nothing is stuck in flight, nothing panicked.
    assert_eq!(health.get(), Ok(()), "the pool stays ready");
    assert_eq!(metrics.in_flight.get(), 0);
    assert_eq!(metrics.panics.get(), 0);
    assert!(!pipeline.pool.task.is_finished(), "the pool keeps running");
    assert!(!pipeline.writer.is_finished(), "the writer keeps running");
    let applies = driver.calls().iter().filter(|c| c.op == "apply").count();
    assert_eq!(applies, good.len(), "helm ran for the good jobs only");

    pipeline.stop().await;
}
