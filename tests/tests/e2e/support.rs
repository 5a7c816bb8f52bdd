//! What every end-to-end case shares: [`Stack`], a thin composition of a few parts, each
//! usable on its own:
//!
//! - [`Charts`] (`charts.rs`): a chart repository on 127.0.0.1 and the configs that name it;
//! - [`Queue`] (`queue.rs`): a fresh `nats-server` with the queue topology, and what its
//!   streams hold;
//! - [`Cluster`] (`cluster.rs`): the API server and helm as the case's admin sees them, in a
//!   namespace of the case's own: Components, Events, namespaces, releases;
//! - [`Processes`] (`processes.rs`): producers and workers started as `just up` starts them,
//!   their logs and the helm subcommands they ran.
//!
//! Cases may run in parallel (nextest runs each in its own process; `cargo test` in threads), so
//! nothing here is shared between stacks: each has its own NATS, chart repository, temp dir,
//! Helm caches and namespace `e2e-<tag>-<pid>-<nonce>`, and its producers watch only that
//! namespace. Process output goes to `<temp dir>/logs/`; when a case panics the directory is
//! kept, the tail of every log is printed and the namespace is left for inspection.

mod charts;
mod cluster;
mod processes;
mod queue;

use std::path::{Path, PathBuf};
use std::time::Duration;

use helmq_queue::topology::Topology;
use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::{Component, ComponentSpec, Phase};
use helmq_tests::procfs::peak_rss_kib;
use helmq_tests::workspace_root;
use serde_json::Value;
use tokio::process::Command;

pub(crate) use self::charts::Charts;
pub(crate) use self::cluster::Cluster;
pub(crate) use self::processes::Processes;
pub(crate) use self::queue::Queue;

/// How long a new Component may wait for its claim.
pub(crate) const CLAIM_WITHIN: Duration = Duration::from_secs(10);
/// How long a Component may take to reach a final phase.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(180);
/// How long a deleted Component (or namespace) may take to go.
pub(crate) const GONE_WITHIN: Duration = Duration::from_secs(120);

/// Returns from the calling test unless `HELMQ_E2E=1`, printing why on its own line.
macro_rules! gate {
    () => {
        if let Err(why) = helmq_tests::e2e_gate() {
            panic!("cannot run: {why}");
        }
    };
}
pub(crate) use gate;

/// What a case needs from its [`Stack`]. In the argument lists `{namespace}` stands for the
/// stack's namespace.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Short DNS-label name of the case; part of the namespace name.
    pub(crate) tag: &'static str,
    /// Workers started with the stack (more with [`Processes::start_worker`]).
    pub(crate) workers: usize,
    /// Extra flags of every worker (e.g. `--max-attempts 3`).
    pub(crate) worker_args: Vec<String>,
    /// Producers (watcher + writer) started with the stack.
    pub(crate) producers: usize,
    /// Extra flags of every producer (e.g. `--leader-elect`).
    pub(crate) producer_args: Vec<String>,
    /// Charts of `tests/fixtures/charts/` the repository serves, each at 0.1.0 and 0.2.0.
    pub(crate) charts: Vec<&'static str>,
    /// Create the queue topology with these tunables (e.g. a short `ack_wait`) instead of
    /// running `helmqctl setup` with the defaults.
    pub(crate) topology: Option<Topology>,
    /// Kubeconfig of the producers (default: the test's own `KUBECONFIG`).
    pub(crate) producer_kubeconfig: Option<PathBuf>,
    /// Kubeconfig of the workers, handed to helm and kubectl (default: the test's own).
    pub(crate) worker_kubeconfig: Option<PathBuf>,
}

impl Options {
    /// One producer, two workers, the `hello` chart, `helmqctl setup`.
    pub(crate) fn new(tag: &'static str) -> Options {
        Options {
            tag,
            workers: 2,
            worker_args: Vec::new(),
            producers: 1,
            producer_args: Vec::new(),
            charts: vec!["hello"],
            topology: None,
            producer_kubeconfig: None,
            worker_kubeconfig: None,
        }
    }
}

/// The RBAC profile the workers of every case run in, from `HELMQ_E2E_PROFILE`; the cases that
/// set [`Options::worker_kubeconfig`] (least privilege, tenancy) choose their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `single` (the default): the workers act with the test's own credentials, as with the
    /// chart's `cluster` profile.
    Single,
    /// `tenants`: the chart's `rbac.profile=tenants`: the workers may only impersonate
    /// `helmq-deployer` accounts and run with `--default-service-account helmq-deployer`, and
    /// the case's namespace is an onboarded tenant ([`crate::rbac::tenants_profile`]).
    Tenants,
}

impl Profile {
    /// The profile `HELMQ_E2E_PROFILE` names; anything but `single`, `tenants` or nothing is a
    /// mistake, not a default.
    pub(crate) fn from_env() -> Profile {
        match std::env::var("HELMQ_E2E_PROFILE").as_deref() {
            Err(_) | Ok("" | "single") => Profile::Single,
            Ok("tenants") => Profile::Tenants,
            Ok(other) => panic!("HELMQ_E2E_PROFILE={other}: expected single or tenants"),
        }
    }
}

/// `target/<profile>/<name>`, next to this test binary (built by `cargo build --bins`).
pub(crate) fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`; `just e2e` does)",
        path.display()
    );
    path
}

/// Runs a program and returns its stdout; panics with its stderr when it fails.
pub(crate) async fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl` for the workers and the cases: `KUBECTL_BIN`, else the one `just setup-kubectl`
/// installs into `.tools/kubectl/`, else `kubectl` on `PATH`.
pub(crate) fn kubectl() -> String {
    if let Ok(path) = std::env::var("KUBECTL_BIN") {
        return path;
    }
    let local = workspace_root().join(".tools/kubectl/kubectl");
    if local.exists() {
        return local.display().to_string();
    }
    "kubectl".into()
}

/// The Component's phase, if it exists and has one.
pub(crate) fn phase(c: Option<&Component>) -> Option<Phase> {
    c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase)
}

/// Whether the Component carries our claim finalizer.
pub(crate) fn claimed(c: Option<&Component>) -> bool {
    c.is_some_and(|c| {
        c.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == HELM_FINALIZER)
    })
}

/// A Component spec for the helm handler with 2 minute timeouts.
pub(crate) fn spec(name: &str, config: Value) -> ComponentSpec {
    ComponentSpec {
        name: name.into(),
        handler: "helm".into(),
        config: Some(config),
        deployment_timeout: Some("2m".into()),
        termination_timeout: Some("2m".into()),
    }
}

/// A live process and its live descendants (however they are grouped): `(pid, command line)`,
/// the process itself first.
pub(crate) fn process_tree(root: u32) -> Vec<(u32, String)> {
    let live: Vec<_> = helmq_tests::procfs::processes()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .collect();
    helmq_tests::procfs::tree(root, &live)
        .into_iter()
        .map(|p| (p.pid, p.command.clone()))
        .collect()
}

/// Everything one case started; dropping it kills the processes. Its parts are its fields.
pub(crate) struct Stack {
    /// The chart repository.
    pub(crate) charts: Charts,
    /// The `nats-server` and its streams.
    pub(crate) queue: Queue,
    /// The API server and helm, in the case's namespace.
    pub(crate) cluster: Cluster,
    /// The producers and workers.
    pub(crate) processes: Processes,
    tag: &'static str,
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("namespace", &self.cluster.namespace())
            .field("nats", &self.queue.nats_url())
            .field("repo_url", &self.charts.repo_url())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Starts a stack with the defaults of [`Options::new`].
    pub(crate) async fn start(tag: &'static str) -> Stack {
        Stack::start_with(Options::new(tag)).await
    }

    /// Starts everything a case needs; see the module docs.
    pub(crate) async fn start_with(mut options: Options) -> Stack {
        let profile = Profile::from_env();
        let helm = std::env::var("HELM_BIN").unwrap_or_else(|_| "helm".into());
        let version = run_ok(&helm, &["version", "--short"]).await;
        eprintln!(
            "e2e[{}]: helm {}, profile {profile:?}",
            options.tag,
            version.trim()
        );
        let cluster = Cluster::connect(options.tag, helm.clone()).await;
        let namespace = cluster.namespace().to_owned();
        let dir = tempfile::Builder::new()
            .prefix(&format!("helmq-e2e-{}-", options.tag))
            .tempdir()
            .expect("temp dir");
        let charts =
            Charts::serve(&helm, &options.charts, &dir.path().join("repo"), &namespace).await;
        let queue = Queue::start(options.topology.as_ref(), &namespace).await;
        if profile == Profile::Tenants && options.worker_kubeconfig.is_none() {
            let kubeconfig =
                crate::rbac::tenants_profile(cluster.client(), &namespace, dir.path()).await;
            options.worker_kubeconfig = Some(kubeconfig);
            options
                .worker_args
                .extend(["--default-service-account".into(), "helmq-deployer".into()]);
        }
        let (producers, workers) = (options.producers, options.workers);
        let tag = options.tag;
        let mut processes = Processes::new(
            options,
            dir.path(),
            queue.nats_url(),
            &namespace,
            charts.repo_url(),
            &helm,
        );
        for i in 1..=producers {
            processes.start_producer(i);
        }
        for _ in 0..workers {
            processes.start_worker();
        }
        Stack {
            charts,
            queue,
            cluster,
            processes,
            tag,
            dir: Some(dir),
        }
    }

    /// Peak RSS (KiB) of every running process: NATS, producers, workers.
    pub(crate) fn peak_rss(&self) -> Vec<(String, u64)> {
        let nats = self
            .queue
            .nats_pid()
            .map(|pid| ("nats-server".to_owned(), peak_rss_kib(pid).unwrap_or(0)));
        nats.into_iter().chain(self.processes.peak_rss()).collect()
    }

    /// Stops the processes (SIGTERM, as `just down` does) and deletes the namespace.
    pub(crate) async fn stop(mut self) {
        self.processes.stop_all().await;
        self.cluster.delete_namespace().await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else { return };
        let dir = dir.keep();
        self.processes.print_log_tails();
        eprintln!(
            "e2e[{}]: logs kept in {}; namespace {} left for inspection",
            self.tag,
            dir.display(),
            self.cluster.namespace()
        );
    }
}
