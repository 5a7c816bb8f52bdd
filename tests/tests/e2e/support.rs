//! What every end-to-end case shares: [`Stack`] (a chart repository on 127.0.0.1, a fresh
//! `nats-server`, the queue topology, producers and workers started as `just up` starts them, a
//! namespace of the test's own) and the helpers to drive Components and to look at what helm,
//! the cluster and the queue did.
//!
//! Cases may run in parallel (nextest runs each in its own process; `cargo test` in threads), so
//! nothing here is shared between stacks: each has its own NATS, chart repository, temp dir,
//! Helm caches and namespace `e2e-<tag>-<pid>-<nonce>`, and its producers watch only that
//! namespace. Process output goes to `<temp dir>/logs/`; when a case panics the directory is
//! kept, the tail of every log is printed and the namespace is left for inspection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use helmq_queue::topology::{DLQ_STREAM, JOBS_STREAM, STATUS_STREAM, Topology};
use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::event::StatusEvent;
use helmq_schemas::subject::status_subject;
use helmq_schemas::{Component, ComponentSpec, Phase};
use helmq_tests::procfs::peak_rss_kib;
use helmq_tests::{NatsServer, workspace_root};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

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
    /// Workers started with the stack (more with [`Stack::start_worker`]).
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

/// One started helmq process.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Everything one case started; dropping it kills the processes.
pub(crate) struct Stack {
    options: Options,
    nats: NatsServer,
    dir: Option<tempfile::TempDir>,
    repo_url: String,
    helm: String,
    helm_wrapper: PathBuf,
    kubectl: String,
    namespace: String,
    client: kube::Client,
    processes: Vec<Proc>,
    workers_started: usize,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("namespace", &self.namespace)
            .field("nats", &self.nats.url())
            .field("repo_url", &self.repo_url)
            .finish_non_exhaustive()
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

/// An absolute path for `program` (a path, or a name looked up on `PATH`).
fn resolve(program: &str) -> PathBuf {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{program}: {e}"));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
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

/// Packages each chart at two versions and serves the repository on 127.0.0.1.
async fn chart_repository(helm: &str, charts: &[&str], dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("repository dir");
    for chart in charts {
        let path = workspace_root().join("tests/fixtures/charts").join(chart);
        for version in ["0.1.0", "0.2.0"] {
            run_ok(
                helm,
                &[
                    "package",
                    path.to_str().expect("utf-8 path"),
                    "--version",
                    version,
                    "-d",
                    dir.to_str().expect("utf-8 path"),
                ],
            )
            .await;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the chart repository");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    run_ok(
        helm,
        &[
            "repo",
            "index",
            dir.to_str().expect("utf-8 path"),
            "--url",
            &url,
        ],
    )
    .await;
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Installs the Component CRD (`helmqctl preflight --install-crd`) and waits until it is
/// established. Cases starting at once may race to create it: the loser sees it present.
async fn install_crd(client: &kube::Client) {
    let ctl = binary("helmqctl");
    let mut last = String::new();
    for _ in 0..3 {
        let out = Command::new(&ctl)
            .args(["preflight", "--install-crd"])
            .output()
            .await
            .expect("run helmqctl preflight");
        if out.status.success() {
            last.clear();
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(last.is_empty(), "helmqctl preflight --install-crd: {last}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = helmq_schemas::component::crd()
        .metadata
        .name
        .expect("CRD name");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get(&name).await.expect("read the CRD");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} not established");
        tokio::time::sleep(Duration::from_millis(200)).await;
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
        let client = kube::Client::try_default()
            .await
            .expect("a cluster from KUBECONFIG");
        install_crd(&client).await;

        let dir = tempfile::Builder::new()
            .prefix(&format!("helmq-e2e-{}-", options.tag))
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        let repo_url = chart_repository(&helm, &options.charts, &dir.path().join("repo")).await;

        let nats = NatsServer::start();
        match &options.topology {
            None => {
                let ctl = binary("helmqctl");
                run_ok(
                    ctl.to_str().expect("utf-8 path"),
                    &["--nats-url", nats.url(), "setup"],
                )
                .await;
            }
            Some(topology) => {
                let js = jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
                topology.ensure(&js).await.expect("create the topology");
            }
        }

        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 0x10000)
            .unwrap_or_default();
        let namespace = format!("e2e-{}-{}-{nonce:04x}", options.tag, std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": namespace, "labels": {"app.kubernetes.io/created-by": "helmq-e2e"}}
                }))
                .expect("namespace"),
            )
            .await
            .expect("create the test namespace");
        if profile == Profile::Tenants && options.worker_kubeconfig.is_none() {
            let kubeconfig = crate::rbac::tenants_profile(&client, &namespace, dir.path()).await;
            options.worker_kubeconfig = Some(kubeconfig);
            options
                .worker_args
                .extend(["--default-service-account".into(), "helmq-deployer".into()]);
        }

        // Every helm run goes through this script, which notes its subcommand and then becomes
        // the real helm (exec: same process, so signals and kills reach helm itself).
        let helm_wrapper = dir.path().join("helm");
        let real_helm = resolve(&helm);
        std::fs::write(
            &helm_wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
                dir.path().join("helm-calls.log").display(),
                real_helm.display()
            ),
        )
        .expect("write the helm wrapper");
        std::fs::set_permissions(
            &helm_wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the helm wrapper");

        let mut stack = Stack {
            nats,
            dir: Some(dir),
            repo_url,
            helm,
            helm_wrapper,
            kubectl: kubectl(),
            namespace,
            client,
            processes: Vec::new(),
            workers_started: 0,
            options,
        };
        for i in 1..=stack.options.producers {
            stack.start_producer(i);
        }
        for _ in 0..stack.options.workers {
            stack.start_worker();
        }
        stack
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("stack dir").path()
    }

    fn expand(&self, args: &[String]) -> Vec<String> {
        args.iter()
            .map(|a| a.replace("{namespace}", &self.namespace))
            .collect()
    }

    fn spawn(&mut self, name: String, mut command: Command) {
        let log = self.dir().join("logs").join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            // Its own process group: signals meant for the test never reach it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.processes.push(Proc { name, child, log });
    }

    fn start_producer(&mut self, i: usize) {
        let mut command = Command::new(binary("helmq-producer"));
        command.args([
            "--nats-url",
            self.nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--namespaces",
            &self.namespace,
            "--leader-identity",
            &format!("e2e-producer-{i}"),
        ]);
        command.args(self.expand(&self.options.producer_args));
        if let Some(kubeconfig) = &self.options.producer_kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        self.spawn(format!("helmq-producer-{i}"), command);
    }

    /// Starts one more worker (`helmq-worker-<n>`) with explicit allowlists (the stack's chart
    /// repository, the release namespaces of the cases) and returns its name.
    pub(crate) fn start_worker(&mut self) -> String {
        self.workers_started += 1;
        let i = self.workers_started;
        let cache = self.dir().join(format!("cache-{i}"));
        let mut command = Command::new(binary("helmq-worker"));
        command.args([
            "--nats-url",
            self.nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--helm-bin",
            self.helm_wrapper.to_str().expect("utf-8 path"),
            "--kubectl-bin",
            &self.kubectl,
            "--worker-id",
            &format!("e2e-{}-{i}", self.options.tag),
            "--cache-dir",
            cache.to_str().expect("utf-8 path"),
            "--allowed-sources",
            &self.repo_url,
            "--allowed-namespaces",
            &release_namespaces(&self.namespace),
        ]);
        if let Some(kubeconfig) = &self.options.worker_kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
            command.env("KUBECONFIG", kubeconfig);
        }
        command.args(self.expand(&self.options.worker_args));
        let name = format!("helmq-worker-{i}");
        self.spawn(name.clone(), command);
        name
    }

    fn process(&mut self, name: &str) -> &mut Proc {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The process id of a started process (e.g. `helmq-worker-1`), which is also its process
    /// group id.
    pub(crate) fn pid(&mut self, name: &str) -> u32 {
        self.process(name)
            .child
            .id()
            .unwrap_or_else(|| panic!("{name} has exited"))
    }

    /// SIGKILLs a process together with all its descendants (its helm children, whatever
    /// process group they run in), as the OOM killer or a lost node ends a pod, and reaps it.
    pub(crate) async fn kill_tree(&mut self, name: &str) {
        let pids: Vec<String> = process_tree(self.pid(name))
            .into_iter()
            .map(|(pid, _)| pid.to_string())
            .collect();
        let mut args = vec!["-KILL", "--"];
        args.extend(pids.iter().map(String::as_str));
        run_ok("kill", &args).await;
        let _ = self.process(name).child.wait().await;
    }

    /// Stops one process with SIGTERM (as Kubernetes stops a pod) and waits for it to exit.
    pub(crate) async fn terminate(&mut self, name: &str) {
        let pid = self.pid(name);
        run_ok("kill", &["-TERM", &pid.to_string()]).await;
        let exited = tokio::time::timeout(Duration::from_secs(70), self.process(name).child.wait())
            .await
            .is_ok();
        assert!(exited, "{name} did not stop within 70s of SIGTERM");
    }

    /// The stack's namespace, where its Components live.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The URL of the stack's own `nats-server`.
    pub(crate) fn nats_url(&self) -> &str {
        self.nats.url()
    }

    /// The real helm executable (`HELM_BIN`, default `helm`).
    pub(crate) fn helm(&self) -> &str {
        &self.helm
    }

    /// The package of `chart` at `version` the stack's repository serves.
    pub(crate) fn chart_package(&self, chart: &str, version: &str) -> PathBuf {
        self.dir()
            .join("repo")
            .join(format!("{chart}-{version}.tgz"))
    }

    /// A client for the cluster, with the test's own (admin) credentials.
    pub(crate) fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The chart repository's URL, e.g. `http://127.0.0.1:40123`.
    pub(crate) fn repo_url(&self) -> &str {
        &self.repo_url
    }

    /// The Components of the stack's namespace.
    pub(crate) fn components(&self) -> Api<Component> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A JetStream context on the stack's NATS.
    pub(crate) async fn jetstream(&self) -> Context {
        jetstream::new(
            async_nats::connect(self.nats.url())
                .await
                .expect("connect to NATS"),
        )
    }

    /// A source-form config of a chart from the stack's repository.
    pub(crate) fn chart_config(
        &self,
        chart: &str,
        version: &str,
        release: &str,
        release_namespace: &str,
        manage_namespace: bool,
        values: Value,
    ) -> Value {
        json!({
            "releaseName": release,
            "releaseNamespace": release_namespace,
            "manageNamespace": manage_namespace,
            "source": {
                "type": "http",
                "repository": {"url": self.repo_url, "name": "e2e"},
                "chart": {"name": chart, "version": version}
            },
            "values": values
        })
    }

    /// The `hello` chart (one ConfigMap) released into the stack's namespace.
    pub(crate) fn hello_config(&self, release: &str, version: &str, greeting: &str) -> Value {
        self.chart_config(
            "hello",
            version,
            release,
            &self.namespace,
            false,
            json!({"greeting": greeting, "nested": {"list": [1, 2, 3], "map": {"a": "b"}}}),
        )
    }

    /// Creates a Component with [`spec`]'s defaults.
    pub(crate) async fn create(&self, name: &str, config: Value) -> Component {
        self.create_spec(name, spec(name, config)).await
    }

    /// Creates a Component with this spec in the stack's namespace.
    pub(crate) async fn create_spec(&self, name: &str, spec: ComponentSpec) -> Component {
        let mut component = Component::new(name, spec);
        component.metadata.namespace = Some(self.namespace.clone());
        self.components()
            .create(&PostParams::default(), &component)
            .await
            .unwrap_or_else(|e| panic!("create Component {name}: {e}"))
    }

    /// Replaces `spec.config` (a new generation).
    pub(crate) async fn patch_config(&self, name: &str, config: Value) -> Component {
        self.components()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"config": config}})),
            )
            .await
            .unwrap_or_else(|e| panic!("patch Component {name}: {e}"))
    }

    /// Polls until `check` accepts the Component (or its absence, given `None`).
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(Option<&Component>) -> bool,
    ) -> Option<Component> {
        let deadline = Instant::now() + within;
        loop {
            let current = self
                .components()
                .get_opt(name)
                .await
                .unwrap_or_else(|e| panic!("get Component {name}: {e}"));
            if check(current.as_ref()) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not {what} within {within:?}; last seen: {:#?}",
                current.map(|c| c.status)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for `phase` with `observedGeneration == generation`.
    pub(crate) async fn wait_phase(&self, name: &str, wanted: Phase, generation: i64) -> Component {
        self.wait_for(
            name,
            READY_WITHIN,
            &format!("{wanted:?} at generation {generation}"),
            |c| {
                c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.phase == Some(wanted) && s.observed_generation == Some(generation)
                })
            },
        )
        .await
        .expect("present")
    }

    /// Deletes a Component and waits until it is gone (the workers uninstalled its release and
    /// the writer removed the finalizer).
    pub(crate) async fn delete_and_wait_gone(&self, name: &str) {
        self.components()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete Component {name}: {e}"));
        self.wait_for(name, GONE_WITHIN, "deleted", |c| c.is_none())
            .await;
    }

    /// Waits until a namespace no longer exists.
    pub(crate) async fn wait_namespace_gone(&self, namespace: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + GONE_WITHIN;
        while let Some(ns) = namespaces.get_opt(namespace).await.expect("get namespace") {
            assert!(
                Instant::now() < deadline,
                "namespace {namespace} still there after {GONE_WITHIN:?}: {:?}",
                ns.status
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `helm <args> -o json`, parsed; `None` when helm fails (e.g. no such release).
    pub(crate) async fn helm_json(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new(&self.helm)
            .args(args)
            .args(["-o", "json"])
            .output()
            .await
            .expect("run helm");
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("helm printed JSON"))
    }

    /// The release's Helm status (`deployed`, `pending-upgrade`, ...), `None` without a release.
    pub(crate) async fn release_status(&self, release: &str, namespace: &str) -> Option<String> {
        self.helm_json(&["status", release, "-n", namespace])
            .await
            .and_then(|v| v["info"]["status"].as_str().map(str::to_owned))
    }

    /// Messages in the dead-letter stream.
    pub(crate) async fn dead_letters(&self) -> u64 {
        let mut dlq = self
            .jetstream()
            .await
            .get_stream(DLQ_STREAM)
            .await
            .expect("DLQ stream");
        dlq.info().await.expect("DLQ info").state.messages
    }

    /// Sequence of the last job JetStream accepted into `HELMQ_JOBS` (jobs ever published,
    /// duplicates dropped by `Nats-Msg-Id` not counted).
    pub(crate) async fn jobs_published(&self) -> u64 {
        let mut jobs = self
            .jetstream()
            .await
            .get_stream(JOBS_STREAM)
            .await
            .expect("jobs stream");
        jobs.info().await.expect("jobs info").state.last_sequence
    }

    /// `(reason, count, note)` of the Kubernetes Events regarding Component `name`, oldest
    /// first.
    pub(crate) async fn events(&self, name: &str) -> Vec<(String, i32, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events = api
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .expect("list events")
            .items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.series.map_or(1, |s| s.count),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits (up to 10 s: the writer records an Event right after the status write) for an
    /// Event with `reason` on Component `name`; returns its note.
    pub(crate) async fn wait_event(&self, name: &str, reason: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(name).await;
            if let Some(event) = events.iter().find(|e| e.0 == reason) {
                return event.2.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no {reason} Event; recorded: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every status event of one Component so far, oldest first.
    pub(crate) async fn status_events(&self, name: &str) -> Vec<StatusEvent> {
        self.status_events_in(&self.namespace, name).await
    }

    /// Every status event published for `namespace/name` so far, oldest first (also for
    /// orchestrator jobs, which name no Component).
    pub(crate) async fn status_events_in(&self, namespace: &str, name: &str) -> Vec<StatusEvent> {
        let subject = status_subject(namespace, name);
        let mut stream = self
            .jetstream()
            .await
            .get_stream(STATUS_STREAM)
            .await
            .expect("status stream");
        let state = &stream.info().await.expect("status info").state;
        let (first, last) = (state.first_sequence, state.last_sequence);
        let mut events = Vec::new();
        for seq in first..=last {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            if message.subject.as_str() == subject {
                events.push(serde_json::from_slice(&message.payload).expect("a status event"));
            }
        }
        events
    }

    /// Every message still stored in the jobs, status and dead-letter streams.
    pub(crate) async fn stored_messages(
        &self,
    ) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let mut messages = Vec::new();
        for name in [JOBS_STREAM, STATUS_STREAM, DLQ_STREAM] {
            let mut stream = js.get_stream(name).await.expect("stream");
            let state = stream.info().await.expect("stream info").state.clone();
            for seq in state.first_sequence..=state.last_sequence {
                if let Ok(message) = stream.get_raw_message(seq).await {
                    messages.push(message);
                }
            }
        }
        messages
    }

    /// Everything the stack's processes (producer, workers, nats-server) logged so far.
    pub(crate) fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }

    /// The helm subcommands run so far, in order (`status`, `upgrade`, `pull`, ...).
    pub(crate) fn helm_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("helm-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Counts of [`helm_calls`](Self::helm_calls) per subcommand.
    pub(crate) fn helm_call_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in self.helm_calls() {
            *counts.entry(call).or_default() += 1;
        }
        counts
    }

    /// Peak RSS (KiB) of every running process: NATS, producers, workers.
    pub(crate) fn peak_rss(&self) -> Vec<(String, u64)> {
        let mut peaks = Vec::new();
        if let Some(pid) = self.nats.pid() {
            peaks.push(("nats-server".to_owned(), peak_rss_kib(pid).unwrap_or(0)));
        }
        for p in &self.processes {
            if let Some(pid) = p.child.id() {
                peaks.push((p.name.clone(), peak_rss_kib(pid).unwrap_or(0)));
            }
        }
        peaks
    }

    /// Stops the processes (SIGTERM, as `just down` does) and deletes the namespace.
    pub(crate) async fn stop(mut self) {
        for p in &mut self.processes {
            if let Some(pid) = p.child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for p in &mut self.processes {
            let _ = tokio::time::timeout(Duration::from_secs(70), p.child.wait()).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else { return };
        let dir = dir.keep();
        for p in &self.processes {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of {} ({}):", p.name, p.log.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
        eprintln!(
            "e2e[{}]: logs kept in {}; namespace {} left for inspection",
            self.options.tag,
            dir.display(),
            self.namespace
        );
    }
}

/// The release namespaces the cases use, all derived from the stack's namespace: the workers'
/// `--allowed-namespaces` (the worker does not start without one).
fn release_namespaces(namespace: &str) -> String {
    ["", "-app", "-rel", "-test-nginx", "-try-webapp"]
        .map(|suffix| format!("{namespace}{suffix}"))
        .join(",")
}
