//! `helmqctl` against a real nats-server: setup, status, publish (with bad files), dead
//! letters (list, show, replay, purge) and watch.

use std::io::Write as _;

use async_nats::jetstream;
use clap::Parser;
use helmq_ctl::{Args, load_job, run};
use helmq_queue::dlq::{DeadLetter, dead_letter};
use helmq_queue::{JetStreamStatus, StatusSink};
use helmq_schemas::event::{ComponentRef, JobEvent, StatusEvent, StatusPhase};
use helmq_tests::NatsServer;

async fn ctl(server: &NatsServer, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["helmqctl", "--nats-url", server.url()];
    argv.extend_from_slice(args);
    let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    run(args, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

const JOB_YAML: &str = r#"
action: apply
component: {namespace: shop, name: web, uid: 6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4, generation: 3}
timeoutSeconds: 120
config:
  releaseName: web
  releaseNamespace: shop
  source:
    type: http
    repository: {url: "https://repo.broadcom.com/bitnami-files", name: bitnami}
    chart: {name: nginx, version: 18.2.4}
  values:
    service: {type: ClusterIP}
    replicaCount: 1
"#;

fn file(text: &str, suffix: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[tokio::test]
async fn setup_publish_and_status_show_the_queue() {
    let server = NatsServer::start();
    let out = ctl(&server, &["setup"]).await.unwrap();
    assert!(out.contains("created  stream HELMQ_JOBS"), "{out}");
    let again = ctl(&server, &["setup"]).await.unwrap();
    assert!(!again.contains("created"), "{again}");

    let yaml = file(JOB_YAML, ".yaml");
    let path = yaml.path().to_str().unwrap();
    let out = ctl(&server, &["publish", "-f", path]).await.unwrap();
    assert_eq!(
        out,
        "published job 6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:3:apply (apply shop/web generation 3) at stream sequence 1\n"
    );
    let out = ctl(&server, &["publish", "-f", path]).await.unwrap();
    assert!(out.contains("is a duplicate of stream sequence 1"), "{out}");

    // The same job as JSON, for another generation.
    let mut job = load_job(yaml.path()).unwrap();
    job.component.generation = 4;
    job.id = job.dedupe_id();
    let json = file(&String::from_utf8(job.encode()).unwrap(), ".json");
    let out = ctl(
        &server,
        &["-o", "json", "publish", "-f", json.path().to_str().unwrap()],
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "stored");
    assert_eq!(v["streamSequence"], 2);

    let out = ctl(&server, &["-o", "json", "status"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["streams"][0]["name"], "HELMQ_JOBS");
    assert_eq!(v["streams"][0]["messages"], 2);
    assert_eq!(v["consumers"][0]["name"], "helmq-workers");
    assert_eq!(v["consumers"][0]["pending"], 2, "{out}");
    assert_eq!(
        v["deadLetters"].as_u64().or(v["dead_letters"].as_u64()),
        Some(0)
    );

    // Workers are seen through their status events.
    let client = async_nats::connect(server.url()).await.unwrap();
    let sink = JetStreamStatus::new(jetstream::new(client));
    let event = StatusEvent::new(
        "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:3:apply",
        job.component.clone(),
        StatusPhase::Deploying,
        "",
        1,
        "worker-a",
        jiff::Timestamp::now(),
    );
    sink.publish_status(&event).await.unwrap();
    let out = ctl(&server, &["status"]).await.unwrap();
    assert!(out.contains("helmq-workers"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("worker-a") && l.contains("  1  ")),
        "{out}"
    );
}

#[tokio::test]
async fn dry_run_validates_without_a_server() {
    let yaml = file(JOB_YAML, ".yaml");
    let args = Args::try_parse_from([
        "helmqctl",
        "--nats-url",
        "nats://127.0.0.1:1",
        "publish",
        "--dry-run",
        "-f",
        yaml.path().to_str().unwrap(),
    ])
    .unwrap();
    let mut out = Vec::new();
    run(args, &mut out).await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "job 6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:3:apply is valid (apply shop/web generation 3); not published (--dry-run)\n"
    );
}

#[test]
fn bad_job_files_get_clear_messages() {
    let cases = [
        (
            "invalid yaml",
            "action: apply\ncomponent: {namespace: shop",
            "is not valid YAML or JSON: ",
        ),
        (
            "not a mapping",
            "- apply\n- delete\n",
            "is not a valid helmq.job/v1 job: expected a mapping at the top level",
        ),
        (
            "no component",
            "action: apply\nconfig: {}\n",
            "is not a valid helmq.job/v1 job: malformed helmq.job/v1 payload: missing field `component`",
        ),
        (
            "invalid config",
            &JOB_YAML.replace("releaseName: web", "releaseName: Web_1"),
            "is not a valid helmq.job/v1 job: invalid helm config: releaseName must be a lowercase DNS-1123 name of at most 53 characters, got Web_1",
        ),
        (
            "future schema",
            &format!("schema: helmq.job/v2\n{JOB_YAML}"),
            "is not a valid helmq.job/v1 job: unknown schema \"helmq.job/v2\" (this build reads helmq.job/v1)",
        ),
        (
            "typo",
            &JOB_YAML.replace("timeoutSeconds", "timeout"),
            "is not a valid helmq.job/v1 job: malformed helmq.job/v1 payload: unknown field `timeout`",
        ),
        (
            "bad action",
            &JOB_YAML.replace("action: apply", "action: rollback"),
            "unknown variant `rollback`, expected `apply` or `delete`",
        ),
    ];
    for (name, text, want) in cases {
        let f = file(text, ".yaml");
        let err = load_job(f.path()).unwrap_err().to_string();
        let path = f.path().display().to_string();
        assert!(err.starts_with(&path), "case {name}: {err}");
        assert!(err.contains(want), "case {name}: {err}");
    }
    let err = load_job(std::path::Path::new("/nonexistent/job.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/job.yaml: "),
        "{err}"
    );
}

#[tokio::test]
async fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    let server = NatsServer::start();
    ctl(&server, &["setup"]).await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let job = load_job(file(JOB_YAML, ".yaml").path()).unwrap();
    for (sequence, reason) in [
        (7, "chart \"nginx\" version \"99\" not found"),
        (8, "not JSON"),
    ] {
        dead_letter(
            &js,
            &DeadLetter {
                payload: job.encode().into(),
                subject: "helmq.jobs.shop.web".into(),
                stream: "HELMQ_JOBS".into(),
                sequence,
                attempts: 1,
                reason: reason.into(),
            },
        )
        .await
        .unwrap();
    }

    let list = ctl(&server, &["dlq", "list"]).await.unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("SEQ"), "{list}");
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains("helmq.jobs.shop.web"),
        "{list}"
    );
    assert!(
        lines[1].ends_with("chart \"nginx\" version \"99\" not found"),
        "{list}"
    );

    let show = ctl(&server, &["-o", "json", "dlq", "show", "1"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["reason"], "chart \"nginx\" version \"99\" not found");
    assert_eq!(v["streamSequence"], 7);
    assert_eq!(v["payload"]["component"]["name"], "web");

    let err = ctl(&server, &["dlq", "show", "42"]).await.unwrap_err();
    assert_eq!(
        err,
        "no dead letter at sequence 42 in HELMQ_DLQ (see `helmqctl dlq list`)"
    );

    // Replay puts the original job back on its subject, even inside the duplicate window.
    let out = ctl(&server, &["dlq", "replay", "1"]).await.unwrap();
    assert_eq!(
        out,
        "replayed dead letter 1 to helmq.jobs.shop.web (stream sequence 1)\n"
    );
    let jobs = js.get_stream("HELMQ_JOBS").await.unwrap();
    let replayed = jobs.get_raw_message(1).await.unwrap();
    assert_eq!(JobEvent::decode(&replayed.payload).unwrap(), job);
    let list = ctl(&server, &["-o", "json", "dlq", "list"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["dlqSequence"], 2);

    let out = ctl(&server, &["dlq", "purge", "--all"]).await.unwrap();
    assert_eq!(out, "purged 1 dead letter(s)\n");
    assert_eq!(
        ctl(&server, &["dlq", "list"]).await.unwrap(),
        "no dead letters\n"
    );
}

/// A status event of `worker-a` for generation 1 of `ns/name`.
fn worker_event(ns: &str, name: &str, phase: StatusPhase) -> StatusEvent {
    StatusEvent::new(
        "j",
        ComponentRef {
            namespace: ns.into(),
            name: name.into(),
            uid: None,
            generation: 1,
        },
        phase,
        "msg",
        1,
        "worker-a",
        jiff::Timestamp::now(),
    )
}

#[tokio::test]
async fn watch_follows_status_events_of_one_namespace() {
    let server = NatsServer::start();
    ctl(&server, &["setup"]).await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let sink = JetStreamStatus::new(jetstream::new(client));
    for event in [
        worker_event("shop", "web", StatusPhase::Deploying),
        worker_event("other", "db", StatusPhase::Deploying),
        worker_event("shop", "my.api", StatusPhase::Ready),
    ] {
        sink.publish_status(&event).await.unwrap();
    }
    let out = ctl(
        &server,
        &[
            "-o", "json", "watch", "-n", "shop", "--since", "1h", "--count", "2",
        ],
    )
    .await
    .unwrap();
    let events: Vec<StatusEvent> = out
        .lines()
        .map(|l| StatusEvent::decode(l.as_bytes()).unwrap())
        .collect();
    let names: Vec<(&str, StatusPhase)> = events
        .iter()
        .map(|e| (e.component.name.as_str(), e.phase))
        .collect();
    assert_eq!(
        names,
        [
            ("web", StatusPhase::Deploying),
            ("my.api", StatusPhase::Ready)
        ]
    );
}

#[tokio::test]
async fn since_far_back_starts_with_the_oldest_event() {
    let server = NatsServer::start();
    ctl(&server, &["setup"]).await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let sink = JetStreamStatus::new(jetstream::new(client));
    let event = worker_event("shop", "web", StatusPhase::Ready);
    sink.publish_status(&event).await.unwrap();
    let out = ctl(
        &server,
        &[
            "-o",
            "json",
            "watch",
            "--since",
            "200000000h",
            "--count",
            "1",
        ],
    )
    .await
    .unwrap();
    let seen = StatusEvent::decode(out.trim().as_bytes()).unwrap();
    assert_eq!(seen.component.name, "web");
    let status = ctl(
        &server,
        &["-o", "json", "status", "--workers-since", "200000000h"],
    )
    .await
    .unwrap();
    assert!(status.contains("worker-a"), "{status}");
}

#[test]
fn the_example_orchestrator_job_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/jobs/nginx-apply.yaml");
    let job = load_job(&path).unwrap();
    assert!(
        job.id.starts_with("shop/storefront:1:apply:"),
        "the default id and a nonce: {}",
        job.id
    );
    assert_eq!(job.config.release_name, "storefront");
    assert_eq!(job.timeout_seconds, 300);
}

#[test]
fn a_job_without_uid_or_id_gets_an_id_nobody_can_guess() {
    let without_uid = JOB_YAML.replace("uid: 6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4, ", "");
    let yaml = file(&without_uid, ".yaml");
    let ids: Vec<String> = (0..2).map(|_| load_job(yaml.path()).unwrap().id).collect();
    for id in &ids {
        let nonce = id
            .strip_prefix("shop/web:3:apply:")
            .unwrap_or_else(|| panic!("{id} is not the default id and a nonce"));
        assert!(
            nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_ne!(ids[0], ids[1], "each publish draws its own nonce");
    // The server's duplicate detection still sees one job per id.
    let job = load_job(yaml.path()).unwrap();
    assert_eq!(job.dedupe_id(), job.id);

    // With a uid (unguessable already) the default id stays, so a repeat is dropped.
    let with_uid = file(JOB_YAML, ".yaml");
    assert_eq!(
        load_job(with_uid.path()).unwrap().id,
        "6f1c2b1e-3d4a-4b5c-8d6e-7f8091a2b3c4:3:apply"
    );
}
