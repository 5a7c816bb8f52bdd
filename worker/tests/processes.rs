//! The `helmq-worker` binary as operators run it: several processes on one stream, with the
//! fake `helm` from tests/fixtures keeping release state in a shared directory.
//!
//! Waits are generous (120 s): every helm run starts a Python process, which takes seconds on
//! a loaded 2-core machine, and a wait ends as soon as its condition holds.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use helmq_queue::Topology;
use helmq_schemas::event::StatusPhase;

struct Worker {
    id: String,
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_worker(env: &Env, dir: &Path, id: &str, extra: &[&str], sleep: &str) -> Worker {
    let state = dir.join("helm-state");
    std::fs::create_dir_all(state.join("control")).unwrap();
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    // helm runs with a cleared environment: the fake's settings come from a wrapper.
    let helm = dir.join(format!("helm-{id}"));
    helmq_tests::write_fake_helm_wrapper(&helm, &fake_helm(), id, &state, sleep).unwrap();
    let kubectl = dir.join(format!("kubectl-{id}"));
    helmq_tests::write_fake_kubectl_wrapper(&kubectl, &fake_kubectl(), &state).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_helmq-worker"))
        .args(["--nats-url", env.server.url()])
        .args(if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        })
        .arg("--helm-bin")
        .arg(&helm)
        .arg("--cache-dir")
        .arg(dir.join(format!("cache-{id}")))
        .args(["--retry-min-delay", "100ms", "--retry-max-delay", "1s"])
        .args(["--allowed-sources", "https://charts.example.com/stable"])
        .args(["--allowed-namespaces", "apps"])
        // The test topologies' leases live a few seconds: a cancelled helm gets one.
        .args(if extra.contains(&"--helm-grace") {
            &[][..]
        } else {
            &["--helm-grace", "1s"][..]
        })
        // The fake kubectl reads the fake helm's records: owner labels and lease stamps.
        .arg("--kubectl-bin")
        .arg(&kubectl)
        .args(extra)
        .env("HELMQ_WORKER_ID", id)
        .env("RUST_LOG", "info,helmq_worker=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Worker {
        id: id.to_owned(),
        child,
    }
}

/// Sends SIGTERM and waits (at most 30 s) for the worker to exit.
async fn terminate(worker: &mut Worker) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = worker.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(path: PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn ready_count(env: &Env) -> usize {
    let mut seen = std::collections::HashSet::new();
    for s in env.statuses().await {
        if s.phase == StatusPhase::Ready {
            seen.insert(s.component.name.clone());
        }
    }
    seen.len()
}

#[tokio::test]
async fn two_worker_processes_never_overlap_on_a_release_and_finish_every_job() {
    let env = Env::start(fast_topology()).await;
    let dir = tempfile::tempdir().unwrap();
    // Components sharing releases: contention for each release's lease.
    let extra = ["--concurrency", "3", "--allow-shared-releases"];
    let _a = spawn_worker(&env, dir.path(), "a", &extra, "0.15");
    let _b = spawn_worker(&env, dir.path(), "b", &extra, "0.15");
    // 18 Components on 3 releases.
    for i in 0..18 {
        env.publish(&apply(&format!("c{i}"), 1, &format!("r{}", i % 3)))
            .await;
    }
    eventually(Duration::from_secs(90), "18 Components Ready", || async {
        (ready_count(&env).await == 18).then_some(())
    })
    .await;
    let state = dir.path().join("helm-state");
    let overlaps = std::fs::read_to_string(state.join("overlaps.log")).unwrap_or_default();
    assert_eq!(overlaps, "", "fake helm saw overlapping runs");
    // Check the recorded intervals too: per release, no run starts before the previous ends.
    let mut by_release: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for run in lines(state.join("timeline.log")) {
        by_release
            .entry(run["release"].as_str().unwrap().to_owned())
            .or_default()
            .push((run["start"].as_f64().unwrap(), run["end"].as_f64().unwrap()));
    }
    assert_eq!(by_release.values().map(Vec::len).sum::<usize>(), 18);
    for (release, mut runs) in by_release {
        runs.sort_by(|x, y| x.0.total_cmp(&y.0));
        for pair in runs.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "{release}: {pair:?} overlap");
        }
    }
    env.no_jobs_left().await;
}

#[tokio::test]
async fn a_job_of_a_killed_worker_is_redelivered_and_its_stuck_release_recovered() {
    let env = Env::start(Topology {
        ack_wait: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(2),
        ..Topology::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut workers = vec![
        spawn_worker(&env, dir.path(), "a", &["--concurrency", "1"], "0"),
        spawn_worker(&env, dir.path(), "b", &["--concurrency", "1"], "0"),
    ];
    env.publish(&apply("web", 1, "web")).await;
    eventually(Duration::from_secs(120), "generation 1 Ready", || async {
        (!env.phases("web", StatusPhase::Ready).await.is_empty()).then_some(())
    })
    .await;
    // The next upgrade records pending-upgrade and hangs until its worker dies.
    let state = dir.path().join("helm-state");
    std::fs::write(state.join("control/web.json"), r#"{"hang": 1}"#).unwrap();
    env.publish(&apply("web", 2, "web")).await;
    let victim = eventually(Duration::from_secs(120), "the second upgrade", || async {
        lines(state.join("calls.log"))
            .iter()
            .filter(|c| matches!(c["argv"][0].as_str(), Some("install" | "upgrade")))
            .nth(1)
            .map(|c| c["worker"].as_str().unwrap().to_owned())
    })
    .await;
    let index = workers.iter().position(|w| w.id == victim).unwrap();
    let mut killed = workers.remove(index);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    let survivor = workers[0].id.clone();

    let ready = eventually(Duration::from_secs(120), "generation 2 Ready", || async {
        env.phases("web", StatusPhase::Ready)
            .await
            .into_iter()
            .find(|s| s.component.generation == 2)
    })
    .await;
    assert_eq!(ready.worker, survivor);
    assert!(ready.attempt >= 2, "a redelivery: {}", ready.attempt);
    assert!(
        ready.message.starts_with(
            "recovered release web from pending-upgrade by rolling back to revision 1; "
        ),
        "{}",
        ready.message
    );
    let release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("releases/apps__web.json")).unwrap(),
    )
    .unwrap();
    let statuses: Vec<_> = release["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["superseded", "failed", "superseded", "deployed"]);
    eventually(Duration::from_secs(120), "queue empty", || async {
        (env.jobs_left().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_with_jobs_in_flight_loses_none() {
    // ack_wait far beyond the test's deadlines: the interrupted jobs only come back in time if
    // the worker Nak'ed them, not because their ack_wait ran out.
    let env = Env::start(Topology {
        ack_wait: Duration::from_secs(600),
        ..fast_topology()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Three slots, runs of 5s, a 1s drain deadline: the running jobs cannot finish in time.
    let mut worker = spawn_worker(
        &env,
        dir.path(),
        "a",
        &["--concurrency", "3", "--drain-deadline", "1s"],
        "5",
    );
    for i in 0..6 {
        env.publish(&apply(&format!("c{i}"), 1, &format!("r{i}")))
            .await;
    }
    let state = dir.path().join("helm-state");
    eventually(
        Duration::from_secs(30),
        "three upgrades running",
        || async {
            let upgrades = lines(state.join("calls.log"))
                .iter()
                .filter(|c| matches!(c["argv"][0].as_str(), Some("install" | "upgrade")))
                .count();
            (upgrades == 3).then_some(())
        },
    )
    .await;
    let exit = terminate(&mut worker).await;
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}\n{log}");
    assert!(log.contains("NATS connection drained and closed"), "{log}");
    // Every job is still in the stream, none held by the dead connection.
    assert_eq!(env.jobs_left().await, 6);
    assert_eq!(ready_count(&env).await, 0);

    // A fresh worker finishes all six (recovering the releases the interrupted runs left pending).
    let _next = spawn_worker(&env, dir.path(), "b", &["--concurrency", "3"], "0");
    eventually(Duration::from_secs(120), "all six Ready", || async {
        (ready_count(&env).await == 6).then_some(())
    })
    .await;
    env.no_jobs_left().await;
    // The interrupted jobs come back (attempt 2, or later while the releases they left pending
    // are younger than the lease TTL and so not provably stale); the others ran once.
    let mut redelivered: Vec<_> = env
        .phases_all(StatusPhase::Ready)
        .await
        .into_iter()
        .filter(|s| s.attempt >= 2)
        .map(|s| s.component.name)
        .collect();
    redelivered.sort();
    redelivered.dedup();
    assert_eq!(
        redelivered.len(),
        3,
        "the three interrupted jobs ran again: {redelivered:?}"
    );
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_within_the_deadline_and_serves_operations() {
    let env = Env::start(fast_topology()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut worker = spawn_worker(
        &env,
        dir.path(),
        "a",
        &[
            "--concurrency",
            "2",
            "--drain-deadline",
            "60s",
            "--listen",
            &listen,
        ],
        "1",
    );
    eventually(
        Duration::from_secs(120),
        "/readyz to answer 200",
        || async {
            http_get(port, "/readyz")
                .await
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        },
    )
    .await;
    for i in 0..4 {
        env.publish(&apply(&format!("c{i}"), 1, &format!("r{i}")))
            .await;
    }
    let state = dir.path().join("helm-state");
    eventually(Duration::from_secs(120), "two upgrades running", || async {
        let upgrades = lines(state.join("calls.log"))
            .iter()
            .filter(|c| matches!(c["argv"][0].as_str(), Some("install" | "upgrade")))
            .count();
        (upgrades == 2).then_some(())
    })
    .await;
    let metrics = http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("helmq_worker_jobs_in_flight 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("helmq_worker_helm_duration_seconds"),
        "{metrics}"
    );
    for what in ["source", "namespace"] {
        let line = format!("helmq_worker_allow_any{{what=\"{what}\"}} 0");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // New releases: one `helm install` each and no `helm status` before it.
    assert!(
        metrics.contains("helmq_worker_helm_processes_total{subcommand=\"install\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("subcommand=\"status\""), "{metrics}");
    let exit = terminate(&mut worker).await;
    assert!(exit.success());
    // The two running jobs finished; the two never pulled are still queued.
    assert_eq!(ready_count(&env).await, 2);
    assert_eq!(env.jobs_left().await, 2);
}

/// Runs the worker binary with `flags` (and no allowlist flags of `spawn_worker`'s) against a
/// server, its stderr in `dir`; returns its exit status (`None` if still running after `wait`) and its stderr.
fn run_bare(
    env: &Env,
    dir: &Path,
    flags: &[&str],
    wait: Duration,
) -> (Option<std::process::ExitStatus>, String, Child) {
    let log = dir.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_helmq-worker"))
        .args(["--nats-url", env.server.url(), "--helm-bin"])
        .arg(fake_helm())
        .args(flags)
        .env_remove("HELMQ_ALLOWED_SOURCES")
        .env_remove("HELMQ_ALLOWED_NAMESPACES")
        .env_remove("HELMQ_ALLOW_ANY_SOURCE")
        .env_remove("HELMQ_ALLOW_ANY_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&log).unwrap_or_default(),
        child,
    )
}

#[tokio::test]
async fn the_worker_refuses_to_start_without_allowlists_unless_any_is_explicit() {
    let env = Env::start(fast_topology()).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &[],
            "helmq-worker: no --allowed-sources given: name the allowed ones, or pass --allow-any-source to allow any (not recommended)\n",
        ),
        (
            &["--allowed-sources", "https://charts.example.com/"],
            "helmq-worker: no --allowed-namespaces given: name the allowed ones, or pass --allow-any-namespace to allow any (not recommended)\n",
        ),
        (
            &["--allow-any-source"],
            "helmq-worker: no --allowed-namespaces given",
        ),
        (
            &[
                "--allowed-sources",
                "https://u:p@charts.example.com/",
                "--allowed-namespaces",
                "apps",
            ],
            "helmq-worker: --allowed-sources entry \"https://u:p@charts.example.com/\" is invalid",
        ),
    ];
    for (flags, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (status, stderr, _child) = run_bare(&env, dir.path(), flags, Duration::from_secs(20));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{flags:?}: {stderr}"
        );
        assert!(stderr.starts_with(want), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: one line: {stderr}");
    }

    // A helm grace the lease cannot cover (TTL 3 s: renewal 600 ms + margin 300 ms + 10 s):
    // refused at start with one line, before any job.
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--allow-any-source",
        "--allow-any-namespace",
        "--listen",
        "127.0.0.1:0",
        "--helm-grace",
        "10s",
    ];
    let (status, stderr, _child) = run_bare(&env, dir.path(), &flags, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    let refusal: Vec<_> = stderr.lines().filter(|l| l.contains("lease TTL")).collect();
    assert_eq!(
        refusal,
        [
            "Error: the release lease TTL (3s, max_age of the helmq_leases bucket) must exceed the renewal period (600ms) + --helm-grace (10s) + a margin of a tenth of the TTL (300ms): lower --helm-grace or re-create the bucket with a longer max_age"
        ],
        "{stderr}"
    );

    // Explicitly open: it starts, warns, and says so in /metrics.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let flags = [
        "--allow-any-source",
        "--allowed-namespaces",
        "apps",
        "--listen",
        &listen,
        "--helm-grace",
        "1s",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (status, _, child) = run_bare(&env, dir.path(), &flags, Duration::from_millis(300));
    let mut worker = Worker {
        id: "open".into(),
        child,
    };
    assert_eq!(status, None, "still running");
    let metrics = eventually(Duration::from_secs(120), "/metrics", || async {
        http_get(port, "/metrics")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(
        metrics.contains("helmq_worker_allow_any{what=\"source\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("helmq_worker_allow_any{what=\"namespace\"} 0"),
        "{metrics}"
    );
    assert!(terminate(&mut worker).await.success());
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(
        log.contains("--allow-any-source: jobs may install charts from any repository or registry"),
        "{log}"
    );
}
