//! Test harness shared by every crate's tests: a real `nats-server` with JetStream on a free
//! 127.0.0.1 port and a temporary store, started per test (or per suite) and killed, with its
//! store removed, on drop.
//!
//! Which server runs: `HELMQ_NATS_SERVER` (a path), else the newest one `scripts/setup-nats.sh`
//! installed under `.tools/`, else `nats-server` on `PATH`. With `NATS_URL` set, tests use that
//! external server instead of starting one (it must be disposable: tests create and delete the
//! `HELMQ_*` streams, so run them with `--test-threads 1`).
//!
//! [`cluster::NatsCluster`] starts three of them routed into one JetStream cluster.
//!
//! Also shared: [`wait`] (poll until a condition holds) and [`build`] (Components and Helm
//! configs for tests), [`faults`] (the fault suite's rows and invariant checks) and [`procfs`]
//! (what `/proc` says about a process and the machine, for the tests and the benchmark).

pub mod build;
pub mod cluster;
pub mod faults;
pub mod procfs;
pub mod wait;

pub use cluster::NatsCluster;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install one with `just setup` (scripts/setup-nats.sh), \
     or point HELMQ_NATS_SERVER at a nats-server binary, or NATS_URL at a running server";

/// A `nats-server` owned by a test; dropping it kills the process and deletes its store.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
    url: String,
    port: u16,
    store: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts the default server (see the module docs), or attaches to `NATS_URL`.
    ///
    /// Panics with an install hint when no server binary can be found: a test cannot run
    /// without one and must say so.
    pub fn start() -> NatsServer {
        if let Ok(url) = std::env::var("NATS_URL") {
            return NatsServer {
                child: None,
                binary: PathBuf::new(),
                args: Vec::new(),
                port: 0,
                url,
                store: None,
            };
        }
        NatsServer::start_with_args(&[])
    }

    /// Starts the default server with extra command-line arguments (e.g. `--auth TOKEN`); never
    /// attaches to `NATS_URL`, since the arguments must take effect.
    pub fn start_with_args(args: &[&str]) -> NatsServer {
        let binary =
            default_binary().unwrap_or_else(|| panic!("no nats-server found: {INSTALL_HINT}"));
        NatsServer::spawn(&binary, args)
    }

    /// Starts a specific `nats-server` binary.
    pub fn start_binary(binary: &Path) -> NatsServer {
        NatsServer::spawn(binary, &[])
    }

    fn spawn(binary: &Path, args: &[&str]) -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("helmq-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the JetStream store: {e}"));
        let mut server = NatsServer {
            child: None,
            binary: binary.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            url: String::new(),
            port: 0,
            store: Some(store),
        };
        server.boot(None);
        server
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id (`None` for an external server or after [`kill`](Self::kill)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The binary's version as it reports it, e.g. `2.10.27` (`None` for an external server).
    pub fn version(&self) -> Option<String> {
        if self.child.is_none() && self.port == 0 {
            return None;
        }
        binary_version(&self.binary)
    }

    /// Kills the server (SIGKILL) and keeps its store, to simulate an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.boot(Some(port));
    }

    fn boot(&mut self, port: Option<u16>) {
        let store = self
            .store
            .as_ref()
            .map(|s| s.path().to_owned())
            .unwrap_or_default();
        let log = store.join("server.log");
        let mut last_error = String::new();
        // A free port can be taken by someone else between probing and binding: try a few.
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let mut command = Command::new(&self.binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.join("js"))
                .arg("-l")
                .arg(&log)
                .args(&self.args);
            let mut child = spawn_quiet(command, &self.binary);
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    self.child = Some(child);
                    self.port = port;
                    self.url = format!("nats://127.0.0.1:{port}");
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "{e}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        panic!(
            "nats-server {} did not start: {last_error}",
            self.binary.display()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server binary tests use by default, if there is one.
pub fn default_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HELMQ_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let local = workspace_root().join(".tools/nats-newest/nats-server");
    if local.exists() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// A 2.9 server binary (`HELMQ_NATS_SERVER_29`, else `.tools/nats-2.9/nats-server`), used only to
/// prove old servers are refused.
pub fn nats_29_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HELMQ_NATS_SERVER_29") {
        return Some(PathBuf::from(path));
    }
    let local = workspace_root().join(".tools/nats-2.9/nats-server");
    local.exists().then_some(local)
}

/// The repository root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts the workspace's binaries (`target/<profile>/`), found from the running test
/// executable (`target/<profile>/deps/<test>-<hash>`). A binary of another package is there
/// once it was built: `cargo build --bins`, or any build of the whole workspace's tests.
pub fn binaries_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

/// Writes an executable `helm` wrapper at `path` that runs `fake_helm` with `HELMQ_WORKER_ID`,
/// `FAKE_HELM_STATE` and `FAKE_HELM_SLEEP` set: workers run helm with a cleared environment,
/// so the fake's settings go through a wrapper.
pub fn write_fake_helm_wrapper(
    path: &Path,
    fake_helm: &Path,
    worker: &str,
    state: &Path,
    sleep: &str,
) -> std::io::Result<()> {
    let exports = format!(
        "HELMQ_WORKER_ID='{worker}' FAKE_HELM_STATE='{}' FAKE_HELM_SLEEP='{sleep}'",
        state.display()
    );
    write_wrapper(path, &exports, fake_helm)
}

/// Writes an executable `kubectl` wrapper at `path` that runs `fake_kubectl` on the fake helm's
/// state `helm_state`: release records are read from it (their labels: owner and lease stamp),
/// namespaces are kept in `helm_state/kubectl`, and every call is logged to
/// `helm_state/kubectl.log`.
pub fn write_fake_kubectl_wrapper(
    path: &Path,
    fake_kubectl: &Path,
    helm_state: &Path,
) -> std::io::Result<()> {
    let exports = format!(
        "FAKE_HELM_STATE='{0}' FAKE_KUBECTL_STATE='{0}/kubectl' FAKE_KUBECTL_LOG='{0}/kubectl.log'",
        helm_state.display()
    );
    write_wrapper(path, &exports, fake_kubectl)
}

/// An executable shell script at `path` that exports `exports` and runs `program`.
fn write_wrapper(path: &Path, exports: &str, program: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nexport {exports}\nexec '{}' \"$@\"\n",
            program.display()
        ),
    )?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// `nats-server --version`, e.g. `2.10.27`.
pub fn binary_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit(' ').next()?.trim_start_matches('v');
    Some(version.to_owned())
}

/// Runs a server `command` of `binary` with no standard streams (it logs to a file); panics
/// with the install hint when the binary cannot run.
fn spawn_quiet(mut command: Command, binary: &Path) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", binary.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

/// Waits until the server sends its INFO line, or reports why it did not.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("not accepting connections after 15s".into())
}

/// Whether the end-to-end suite can run: `Ok` with `HELMQ_E2E=1`, otherwise the message saying
/// why it cannot and how to run it (an end-to-end case then fails with it: its cases are
/// `#[ignore]`d, so only an explicit request runs them, and a pass that did nothing would lie).
pub fn e2e_gate() -> Result<(), String> {
    match std::env::var("HELMQ_E2E").as_deref() {
        Ok("1") => Ok(()),
        _ => Err("the end-to-end suite needs a Kubernetes cluster and helm; run it with \
                  HELMQ_E2E=1 (uses KUBECONFIG and HELM_BIN, default `helm`): `HELMQ_E2E=1 just e2e`"
            .into()),
    }
}
