//! `HelmCli` against the fake `helm` in tests/fixtures: arguments, the chart cache, values in a
//! 0600 file, not-found handling, stuck-release state, error classification, cancellation
//! (SIGTERM first, SIGKILL after the grace period).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{WORKER, config, eventually, fake_helm, owner, target};
use helmq_worker::HelmCli;
use helmq_worker::driver::Target;
use helmq_worker::driver::{
    Apply, DriverError, HelmCliSettings, HelmDriver, NamespaceDeletion, Recovery, Release,
    Uninstalled, recovery_plan,
};
use helmq_worker::failure::Cause;
use helmq_worker::ownership::{Identity, Owner};
use helmq_worker::policy::Failure;
use helmq_worker::remediation::judge_failure;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    state: PathBuf,
    cli: HelmCli,
}

impl Fixture {
    /// `helm status` of release apps/web, which exists.
    async fn web_status(&self, cancel: &CancellationToken) -> Release {
        self.cli
            .status(target("web", "apps"), cancel)
            .await
            .unwrap()
            .expect("release apps/web")
    }

    /// `HelmCli::apply` of `config` with the test timeout.
    async fn apply(
        &self,
        config: &helmq_schemas::HelmConfig,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        self.cli
            .apply(
                Apply {
                    config,
                    timeout: T,
                    own_namespace: "team",
                    lease_revision: 1,
                    identity: &WORKER,
                    owner: &owner(),
                    install: false,
                },
                cancel,
            )
            .await
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

/// A fixture whose settings `tune` changes.
fn fixture_with(tune: impl FnOnce(&mut HelmCliSettings)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut settings = HelmCliSettings::new(fake_helm(), &cache);
    settings.kubectl_bin = Some(dir.path().join("no-such-kubectl"));
    tune(&mut settings);
    let cli = HelmCli::new(settings).unwrap();
    // Without FAKE_HELM_STATE the fake keeps its state under HELM_DATA_HOME.
    let state = cache.join("helm/data/fake-helm-state");
    std::fs::create_dir_all(state.join("control")).unwrap();
    Fixture {
        _dir: dir,
        cache,
        state,
        cli,
    }
}

fn calls(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn subcommands(state: &Path) -> Vec<String> {
    calls(state)
        .iter()
        .map(|c| c["argv"][0].as_str().unwrap().to_owned())
        .collect()
}

fn control(state: &Path, release: &str, value: serde_json::Value) {
    std::fs::write(
        state.join("control").join(format!("{release}.json")),
        value.to_string(),
    )
    .unwrap();
}

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn apply_installs_from_a_cached_package_with_values_in_a_private_file() {
    let f = fixture();
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let first = f.apply(&cfg, &cancel).await.unwrap();
    assert_eq!((first.revision, first.status.as_str()), (1, "deployed"));
    assert_eq!(first.chart_version.as_deref(), Some("1.2.3"));
    let second = f.apply(&cfg, &cancel).await.unwrap();
    assert_eq!(second.revision, 2);
    // One pull for both runs: the package is cached, no index per job.
    assert_eq!(subcommands(&f.state), ["pull", "upgrade", "upgrade"]);
    let log = std::fs::read_to_string(f.state.join("calls.log")).unwrap();
    assert!(!log.contains("hunter2"), "values never on the command line");
    let upgrade = &calls(&f.state)[1]["argv"];
    // Release and chart after `--`: never read as flags.
    let argv = upgrade.as_array().unwrap();
    let end = argv.iter().position(|a| a == "--").expect("--");
    assert_eq!(argv[end + 1], "web", "{upgrade}");
    assert!(
        argv[end + 2].as_str().unwrap().ends_with("nginx-1.2.3.tgz"),
        "{upgrade}"
    );
    assert!(
        upgrade
            .as_array()
            .unwrap()
            .contains(&"--create-namespace".into())
    );
    // The values file is gone after the run.
    let leftovers = std::fs::read_dir(f.cache.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0);

    let status = f.web_status(&cancel).await;
    assert_eq!((status.revision, status.status.as_str()), (2, "deployed"));
    let history = f.cli.history(target("web", "apps"), &cancel).await.unwrap();
    let statuses: Vec<_> = history.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["superseded", "deployed"]);
}

#[tokio::test]
async fn missing_releases_are_not_errors() {
    let f = fixture();
    let cancel = CancellationToken::new();
    assert_eq!(
        f.cli.status(target("nope", "apps"), &cancel).await.unwrap(),
        None
    );
    assert!(
        f.cli
            .history(target("nope", "apps"), &cancel)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.cli
            .uninstall(target("nope", "apps"), T, &cancel)
            .await
            .unwrap(),
        Uninstalled::NotFound
    );
    let cfg = config("web", "apps");
    f.apply(&cfg, &cancel).await.unwrap();
    assert_eq!(
        f.cli
            .uninstall(target("web", "apps"), T, &cancel)
            .await
            .unwrap(),
        Uninstalled::Removed
    );
    match f
        .cli
        .delete_namespace("apps", &WORKER, &owner(), &cancel)
        .await
        .unwrap()
    {
        NamespaceDeletion::Skipped(why) => {
            assert!(
                why.starts_with("namespace apps was not deleted: cannot run"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stuck_release_is_rolled_back_through_helm() {
    let f = fixture();
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    f.apply(&cfg, &cancel).await.unwrap();
    // Leave the next upgrade pending, as a killed run would.
    let state = f.state.join("releases/apps__web.json");
    let mut rel: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let mut pending = rel["revisions"][0].clone();
    pending["revision"] = 2.into();
    pending["status"] = "pending-upgrade".into();
    rel["revisions"].as_array_mut().unwrap().push(pending);
    std::fs::write(&state, rel.to_string()).unwrap();

    let err = f.apply(&cfg, &cancel).await.unwrap_err();
    assert_eq!(err.failure(), Failure::Transient, "{err}");
    let status = f.web_status(&cancel).await;
    let history = f.cli.history(target("web", "apps"), &cancel).await.unwrap();
    let plan = recovery_plan(&status.status, &history).unwrap();
    assert_eq!(
        plan,
        Recovery::Rollback {
            from: "pending-upgrade".into(),
            revision: 1
        }
    );
    f.cli
        .rollback(target("web", "apps"), 1, T, &cancel)
        .await
        .unwrap();
    let after = f.apply(&cfg, &cancel).await.unwrap();
    assert_eq!((after.revision, after.status.as_str()), (4, "deployed"));
}

#[tokio::test]
async fn helm_errors_are_classified() {
    let f = fixture();
    let cancel = CancellationToken::new();
    std::fs::write(f.state.join("charts-missing"), "nginx\n").unwrap();
    let cfg = config("web", "apps");
    let err = f.apply(&cfg, &cancel).await.unwrap_err();
    assert_eq!(err.failure(), Failure::Permanent, "{err}");
    assert!(
        err.to_string()
            .contains(r#"chart "nginx" version "1.2.3" not found"#),
        "{err}"
    );

    std::fs::remove_file(f.state.join("charts-missing")).unwrap();
    control(
        &f.state,
        "web",
        serde_json::json!({"fail": [
            {"stderr": "Error: UPGRADE FAILED: template: nginx/templates/svc.yaml:3:4: executing \"x\" at <.Values.x>: nil pointer"},
            {"stderr": "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp: connect: connection refused"}
        ]}),
    );
    let err = f.apply(&cfg, &cancel).await.unwrap_err();
    assert_eq!(err.failure(), Failure::Permanent, "{err}");
    let err = f.apply(&cfg, &cancel).await.unwrap_err();
    assert_eq!(err.failure(), Failure::Transient, "{err}");
    assert!(f.apply(&cfg, &cancel).await.is_ok());
}

#[tokio::test]
async fn cancelling_a_run_kills_the_helm_process() {
    let f = fixture();
    control(&f.state, "web", serde_json::json!({"sleep": 120}));
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let cli = &f.cli;
    let owner = owner();
    let run = cli.apply(
        Apply {
            config: &cfg,
            timeout: T,
            own_namespace: "team",
            lease_revision: 1,
            identity: &WORKER,
            owner: &owner,
            install: false,
        },
        &cancel,
    );
    let state = f.state.clone();
    let watcher = async {
        let pid = eventually(Duration::from_secs(20), "upgrade started", || async {
            calls(&state)
                .iter()
                .find(|c| c["argv"][0] == "upgrade")
                .and_then(|c| c["pid"].as_u64())
        })
        .await;
        cancel.cancel();
        pid
    };
    let (result, pid) = tokio::join!(run, watcher);
    assert!(
        matches!(result, Err(DriverError::Cancelled { .. })),
        "{result:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the helm process to be gone",
        || async {
            // Gone, or a zombie about to be reaped.
            gone(pid).then_some(())
        },
    )
    .await;
}

/// The pid of the first `upgrade` the fake recorded, once it has started.
async fn upgrade_pid(state: &Path) -> u64 {
    eventually(Duration::from_secs(20), "upgrade started", || async {
        calls(state)
            .iter()
            .find(|c| c["argv"][0] == "upgrade")
            .and_then(|c| c["pid"].as_u64())
    })
    .await
}

/// Whether process `pid` is gone (or a zombie about to be reaped).
fn gone(pid: u64) -> bool {
    u32::try_from(pid).is_ok_and(|pid| !helmq_tests::procfs::is_alive(pid))
}

/// The lines of the fake's terminated.log.
fn terminations(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join("terminated.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

/// Applies `web` and cancels the run once the fake's upgrade runs; returns the result, the
/// upgrade's pid and the time from the cancel to the end of the run.
async fn cancel_an_upgrade(f: &Fixture) -> (Result<Release, DriverError>, u64, Duration) {
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let run = async {
        let result = f.apply(&cfg, &cancel).await;
        (result, std::time::Instant::now())
    };
    let watcher = async {
        let pid = upgrade_pid(&f.state).await;
        // Let the fake install its signal handler before it is signalled.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        (pid, std::time::Instant::now())
    };
    let ((result, ended), (pid, cancelled)) = tokio::join!(run, watcher);
    (result, pid, ended.duration_since(cancelled))
}

#[tokio::test]
async fn cancelling_a_run_sends_sigterm_first_and_helm_marks_the_release_failed() {
    let f = fixture();
    control(
        &f.state,
        "web",
        serde_json::json!({"sleep": 120, "term": "fail"}),
    );
    let (result, pid, took) = cancel_an_upgrade(&f).await;
    assert!(
        matches!(result, Err(DriverError::Cancelled { .. })),
        "{result:?}"
    );
    assert_eq!(terminations(&f.state), ["terminated"]);
    // The fake exits on TERM: no waiting for the (10 s) grace.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(gone(pid));
    let cancel = CancellationToken::new();
    let status = f.web_status(&cancel).await;
    assert_eq!(status.status.as_str(), "failed", "not left pending-install");
}

#[tokio::test]
async fn a_helm_that_ignores_sigterm_is_killed_after_the_grace() {
    let grace = Duration::from_millis(700);
    let f = fixture_with(|s| s.grace = grace);
    control(
        &f.state,
        "web",
        serde_json::json!({"sleep": 120, "term": "ignore"}),
    );
    let (result, pid, took) = cancel_an_upgrade(&f).await;
    assert!(
        matches!(result, Err(DriverError::Cancelled { .. })),
        "{result:?}"
    );
    assert_eq!(terminations(&f.state), ["ignored"]);
    assert!(took >= grace, "SIGKILL only after the grace: {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    eventually(
        Duration::from_secs(10),
        "the helm process to be gone",
        || async { gone(pid).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_time_limit_sends_sigterm_first() {
    let f = fixture_with(|s| s.margin = Duration::ZERO);
    control(
        &f.state,
        "web",
        serde_json::json!({"sleep": 120, "term": "fail"}),
    );
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let result = f
        .cli
        .apply(
            Apply {
                config: &cfg,
                timeout: Duration::from_secs(2),
                own_namespace: "team",
                lease_revision: 1,
                identity: &WORKER,
                owner: &owner(),
                install: false,
            },
            &cancel,
        )
        .await;
    assert!(
        matches!(result, Err(DriverError::TimedOut { .. })),
        "{result:?}"
    );
    assert_eq!(terminations(&f.state), ["terminated"]);
    let status = f.web_status(&cancel).await;
    assert_eq!(status.status.as_str(), "failed");
}

#[tokio::test]
async fn dropping_a_run_kills_the_helm_process() {
    let f = fixture_with(|s| s.grace = Duration::from_secs(60));
    control(
        &f.state,
        "web",
        serde_json::json!({"sleep": 120, "term": "ignore"}),
    );
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let pid = tokio::select! {
        result = f.apply(&cfg, &cancel) => panic!("{result:?}"),
        pid = upgrade_pid(&f.state) => pid,
    };
    // The run's future is gone: its process group was sent SIGKILL, not SIGTERM.
    eventually(
        Duration::from_secs(10),
        "the helm process to be gone",
        || async { gone(pid).then_some(()) },
    )
    .await;
    assert!(terminations(&f.state).is_empty());
}

#[tokio::test]
async fn the_chart_cache_keeps_to_its_bound_by_evicting_the_least_recently_used() {
    let version = |v: &str| {
        let mut cfg = config("web", "apps");
        if let helmq_schemas::ChartSource::Http { chart, .. } = &mut cfg.source {
            chart.version = v.into();
        }
        cfg
    };
    let entries = |cache: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(cache.join("charts"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let cancel = CancellationToken::new();
    // Learn the size of one entry, then allow two.
    let probe = fixture();
    probe.apply(&version("1.0.0"), &cancel).await.unwrap();
    let charts = probe.cache.join("charts");
    let one: u64 = std::fs::read_dir(&charts)
        .unwrap()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(one > 0);
    let f = fixture_with(|s| s.chart_cache_max_bytes = 2 * one + one / 2);
    for v in ["1.0.0", "2.0.0", "1.0.0", "3.0.0"] {
        f.apply(&version(v), &cancel).await.unwrap();
    }
    let kept = entries(&f.cache);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter().any(|k| k.contains("1.0.0")),
        "1.0.0 was used again: {kept:?}"
    );
    assert!(kept.iter().any(|k| k.contains("3.0.0")), "{kept:?}");
    // 2.0.0 was evicted: using it again pulls it again.
    f.apply(&version("2.0.0"), &cancel).await.unwrap();
    let pulls = subcommands(&f.state)
        .iter()
        .filter(|c| *c == "pull")
        .count();
    assert_eq!(pulls, 4, "1.0.0, 2.0.0, 3.0.0, 2.0.0 again");
    assert_eq!(entries(&f.cache).len(), 2);
    // A worker starting on a cache over its bound brings it within.
    drop(f.cli);
    let settings = {
        let mut s = HelmCliSettings::new(fake_helm(), &f.cache);
        s.chart_cache_max_bytes = one;
        s
    };
    let _cli = HelmCli::new(settings).unwrap();
    assert_eq!(entries(&f.cache).len(), 1);
}

/// A fixture whose kubectl is the fake one, reading the fake helm's records.
fn fixture_with_kubectl() -> Fixture {
    fixture_with(|settings| {
        let state = settings.cache_dir.join("helm/data/fake-helm-state");
        let wrapper = settings.cache_dir.with_file_name("kubectl");
        helmq_tests::write_fake_kubectl_wrapper(&wrapper, &common::fake_kubectl(), &state).unwrap();
        settings.kubectl_bin = Some(wrapper);
    })
}

fn kubectl_argv(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join("kubectl.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let call: serde_json::Value = serde_json::from_str(l).unwrap();
            joined(&call["argv"])
        })
        .collect()
}

/// A logged argument list, joined with spaces.
fn joined(argv: &serde_json::Value) -> String {
    let argv: Vec<&str> = argv
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    argv.join(" ")
}

#[tokio::test]
async fn a_tenants_apply_runs_as_its_account_and_labels_the_release_and_its_namespace() {
    let f = fixture_with_kubectl();
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    let tenant = Identity::User("system:serviceaccount:team:deployer".into());
    let owner = owner();
    let apply = |identity| Apply {
        config: &cfg,
        timeout: T,
        own_namespace: "team",
        lease_revision: 7,
        identity,
        owner: &owner,
        install: false,
    };
    f.cli.apply(apply(&tenant), &cancel).await.unwrap();

    // helm as the tenant, without --create-namespace: kubectl created the namespace, as the
    // tenant, with the owner's labels.
    let upgrade = calls(&f.state)
        .into_iter()
        .find(|c| c["argv"][0] == "upgrade")
        .unwrap();
    let argv: Vec<&str> = upgrade["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        argv.contains(&"--kube-as-user=system:serviceaccount:team:deployer"),
        "{argv:?}"
    );
    assert!(!argv.contains(&"--create-namespace"), "{argv:?}");
    assert_eq!(
        kubectl_argv(&f.state),
        ["create -o name -f - --as=system:serviceaccount:team:deployer"]
    );
    let namespace: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.state.join("kubectl/namespaces/apps.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["helmq.io/owner-uid"],
        owner.uid.as_str()
    );

    // The release record carries the owner and the lease stamp.
    let web = Target {
        release: "web",
        namespace: "apps",
        identity: &tenant,
    };
    let labels = f.cli.labels(web, 1, &cancel).await.unwrap();
    assert_eq!(Owner::from_labels(&labels), Some(owner.clone()));
    assert_eq!(
        labels.get("helmq.io/lease-revision").map(String::as_str),
        Some("7")
    );
    assert_eq!(labels.get("owner").map(String::as_str), Some("helm"));

    // A second apply finds the namespace and leaves it alone.
    f.cli.apply(apply(&tenant), &cancel).await.unwrap();
    // The namespace goes only for its owner.
    let stranger = Owner {
        uid: "someone-else".into(),
        ..owner.clone()
    };
    assert_eq!(
        f.cli
            .delete_namespace("apps", &tenant, &stranger, &cancel)
            .await
            .unwrap(),
        NamespaceDeletion::NotOwned
    );
    assert_eq!(
        f.cli
            .delete_namespace("apps", &tenant, &owner, &cancel)
            .await
            .unwrap(),
        NamespaceDeletion::Deleted
    );
    let kubectl = kubectl_argv(&f.state);
    assert_eq!(
        kubectl.last().map(String::as_str),
        Some(
            "delete namespace --ignore-not-found --wait=false --as=system:serviceaccount:team:deployer -- apps"
        )
    );
    assert!(
        kubectl
            .iter()
            .all(|c| c.contains("--as=system:serviceaccount:team:deployer")),
        "{kubectl:?}"
    );
}

#[tokio::test]
async fn a_namespace_that_existed_before_is_never_claimed() {
    let f = fixture_with_kubectl();
    let cancel = CancellationToken::new();
    // Made by someone else, before helmq.
    let dir = f.state.join("kubectl/namespaces");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("apps.json"),
        r#"{"kind":"Namespace","metadata":{"name":"apps","labels":{"team":"b"}}}"#,
    )
    .unwrap();
    f.apply(&config("web", "apps"), &cancel).await.unwrap();
    assert_eq!(
        f.cli
            .delete_namespace("apps", &WORKER, &owner(), &cancel)
            .await
            .unwrap(),
        NamespaceDeletion::NotOwned
    );
    assert!(dir.join("apps.json").exists());
}

/// The argument list of the newest call of `subcommand`, joined with spaces.
fn last_argv(state: &Path, subcommand: &str) -> String {
    let call = calls(state)
        .into_iter()
        .rfind(|c| c["argv"][0] == subcommand)
        .unwrap_or_else(|| panic!("no helm {subcommand}"));
    joined(&call["argv"])
}

#[tokio::test]
async fn helm_test_runs_as_the_jobs_account_and_a_failed_test_is_permanent() {
    let f = fixture();
    let cancel = CancellationToken::new();
    f.apply(&config("web", "apps"), &cancel).await.unwrap();
    let tenant = Identity::User("system:serviceaccount:team:deployer".into());
    let web = Target {
        release: "web",
        namespace: "apps",
        identity: &tenant,
    };
    control(
        &f.state,
        "web",
        serde_json::json!({"tests": [
            {},
            {"phase": "Failed"},
            {"error": "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp: connect: connection refused"}
        ]}),
    );
    f.cli
        .test(web, Duration::from_secs(90), &cancel)
        .await
        .unwrap();
    // The release after `--`, the identity as every other call of a job.
    assert_eq!(
        last_argv(&f.state, "test"),
        "test --namespace=apps --timeout 90s \
         --kube-as-user=system:serviceaccount:team:deployer -- web"
    );

    let failed = f.cli.test(web, T, &cancel).await.unwrap_err();
    assert_eq!(failed.failure(), Failure::Permanent, "{failed}");
    assert_eq!(failed.cause(), Some(&Cause::TestFailed));
    assert_eq!(
        failed.to_string(),
        "helm test failed: Error: resource Pod/apps/web-test not ready. status: Failed, \
         message: pod web-test failed"
    );
    // Helm could not run the tests: classified as any other failure.
    let unreachable = f.cli.test(web, T, &cancel).await.unwrap_err();
    assert_eq!(unreachable.failure(), Failure::Transient, "{unreachable}");
    assert_ne!(unreachable.cause(), Some(&Cause::TestFailed));
    let gone = f
        .cli
        .test(target("nope", "apps"), T, &cancel)
        .await
        .unwrap_err();
    assert!(gone.to_string().contains("release: not found"), "{gone}");
    assert_ne!(gone.cause(), Some(&Cause::TestFailed));
}

#[tokio::test]
async fn a_failed_upgrade_helm_recorded_is_judged_from_its_history_and_rolled_back() {
    let f = fixture();
    let cancel = CancellationToken::new();
    let cfg = config("web", "apps");
    f.apply(&cfg, &cancel).await.unwrap();
    let since = jiff::Timestamp::now();
    control(
        &f.state,
        "web",
        serde_json::json!({"fail": [{
            "stderr": "Error: UPGRADE FAILED: resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/2",
            "record": true
        }]}),
    );
    f.apply(&cfg, &cancel).await.unwrap_err();
    let history = f.cli.history(target("web", "apps"), &cancel).await.unwrap();
    let failed = judge_failure(&history, None, since).expect("a failed revision of this run");
    assert_eq!(
        (failed.revision, failed.last_deployed),
        (2, Some(1)),
        "{history:?}"
    );
    let tenant = Identity::User("system:serviceaccount:team:deployer".into());
    let web = Target {
        release: "web",
        namespace: "apps",
        identity: &tenant,
    };
    f.cli.rollback(web, 1, T, &cancel).await.unwrap();
    assert_eq!(
        last_argv(&f.state, "rollback"),
        "rollback --namespace=apps --wait --timeout 30s \
         --kube-as-user=system:serviceaccount:team:deployer -- web 1"
    );
    let status = f.web_status(&cancel).await;
    assert_eq!((status.revision, status.status.as_str()), (3, "deployed"));
    // A failure before helm wrote anything (a rendering error) leaves nothing to remediate.
    let since = jiff::Timestamp::now();
    control(
        &f.state,
        "web",
        serde_json::json!({"fail": [{"stderr": "Error: UPGRADE FAILED: template: nginx/templates/svc.yaml:3:4: nil pointer"}]}),
    );
    f.apply(&cfg, &cancel).await.unwrap_err();
    let history = f.cli.history(target("web", "apps"), &cancel).await.unwrap();
    assert_eq!(judge_failure(&history, None, since), None, "{history:?}");
}
