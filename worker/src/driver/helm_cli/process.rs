//! Running `helm` and `kubectl`: every process runs in a process group of its own, its output
//! captured up to a cap, its stdin closed (or fed and then closed), a time limit of its own and
//! a cancellation token.
//!
//! A timeout or a cancel stops the process gracefully: SIGTERM to its group, then SIGKILL to
//! the group when it is still running after the grace period (Helm marks a release `failed` on
//! SIGTERM; after SIGKILL it stays `pending-*`). Dropping a run that is still going kills the
//! group at once.
//!
//! Every process starts from a cleared environment plus the variables [`child_env`] lets
//! through, so helm, kubectl and chart plugins never see the worker's NATS credentials or any
//! other secret the worker's own environment holds.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::output::readable_stderr;
use crate::driver::{DriverError, Tool};

/// The most of a process's stdout that is kept; the rest is read and discarded.
pub(super) const STDOUT_CAP: usize = 4 * 1024 * 1024;
/// The most of a process's stderr that is kept; the rest is read and discarded.
pub(super) const STDERR_CAP: usize = 64 * 1024;

/// How long a process killed with SIGKILL gets to be reaped and close its output.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Variables a child gets from the worker's environment, by exact name: what helm and kubectl
/// need to find themselves (`PATH`, `HOME`, `TMPDIR`), the cluster (`KUBECONFIG`, and the
/// in-cluster `KUBERNETES_SERVICE_*`), proxies in both spellings, and TLS trust roots.
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Helm's own settings passed on to helm (never to kubectl): the storage driver and its
/// history and client limits. Not passed: the homes (`HELM_CACHE_HOME`, `HELM_CONFIG_HOME`,
/// `HELM_DATA_HOME`, and so the repository, registry and plugin paths under them), which the
/// driver sets to its cache directory; `HELM_REGISTRY_CONFIG`, which it sets per pull; and
/// `HELM_KUBE*` and `HELM_NAMESPACE`, which would change whom helm acts as and where.
const PASSED_TO_HELM: &[&str] = &[
    "HELM_DRIVER",
    "HELM_DRIVER_SQL_CONNECTION_STRING",
    "HELM_MAX_HISTORY",
    "HELM_BURST_LIMIT",
    "HELM_QPS",
];

/// Whether `tool` gets the worker's variable `name`.
pub(super) fn passes(tool: Tool, name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    PASSED.contains(&name) || (tool == Tool::Helm && PASSED_TO_HELM.contains(&name))
}

/// The environment of a `tool` child, from the worker's `vars`: only what [`passes`].
pub(super) fn child_env(
    tool: Tool,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, _)| passes(tool, name))
        .collect()
}

/// A command for `tool` at `program` with a cleared environment plus [`child_env`] of the
/// worker's own; callers add what they set themselves.
pub(super) fn command(tool: Tool, program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .envs(child_env(tool, std::env::vars_os()));
    command
}

/// What a process wrote to its stdout, up to [`STDOUT_CAP`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stdout {
    /// The text kept (invalid UTF-8 replaced).
    pub(super) text: String,
    /// Whether more was written than was kept.
    pub(super) truncated: bool,
}

/// How a process that ran to its end exited.
#[derive(Debug)]
pub(super) enum Exit {
    /// Exit status 0, with its stdout.
    Success(Stdout),
    /// Any other exit.
    Failure {
        /// The subcommand (the first argument).
        command: String,
        /// The exit code, `None` when a signal killed the process.
        code: Option<i32>,
        /// Its stderr as [`readable_stderr`] makes it: secrets redacted, cut at
        /// [`ERROR_CAP`](super::output::ERROR_CAP) with a marker.
        stderr: String,
        /// Its stdout, up to [`STDOUT_CAP`]: read for what it reports (`helm test`'s test
        /// suite), never put into a message or a log.
        stdout: String,
    },
}

/// A process group to kill with SIGKILL when dropped while armed: a run dropped mid-way (its
/// future dropped) must not leave helm or its children running.
#[derive(Debug)]
struct GroupGuard {
    /// The group's id (the leader's pid); `None` once the run is over.
    pgid: Option<Pid>,
}

impl GroupGuard {
    /// Sends `signal` to the group, when still armed.
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH: the group is already gone, which is what the signal is for.
            let _ = killpg(pgid, signal);
        }
    }

    /// The run is over: nothing to kill any more.
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// How a process is stopped when it must not run on: SIGTERM, then SIGKILL after `grace`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The longest the process may run.
    pub(super) time: Duration,
    /// Time between SIGTERM and SIGKILL when the process is stopped.
    pub(super) grace: Duration,
}

/// Runs `command` (program and arguments set) to its end, within `limits.time`, writing
/// `input` (when given) to its stdin and then closing it. `input` (a password) and `secrets`
/// are redacted from the stderr of a failure.
///
/// # Errors
///
/// [`DriverError::Spawn`] when it cannot start or its output cannot be read,
/// [`DriverError::TimedOut`] and [`DriverError::Cancelled`] (the process group is sent
/// SIGTERM, then SIGKILL after the grace period).
pub(super) async fn run(
    mut command: Command,
    tool: Tool,
    input: Option<&[u8]>,
    secrets: &[&[u8]],
    limits: Limits,
    cancel: &CancellationToken,
) -> Result<Exit, DriverError> {
    let std_command = command.as_std();
    let program = Path::new(std_command.get_program()).display().to_string();
    let name = std_command
        .get_args()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let spawn_error = |source| DriverError::Spawn {
        program: program.clone(),
        needed_to: None,
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    // Declared after `child`, so dropped before it: the group is killed while its leader is
    // not reaped yet, so its id cannot have been reused.
    let mut group = GroupGuard {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A process that exits without reading its stdin fails on its own; its exit status
            // and stderr tell why, so a broken pipe here is not an error of its own.
            let _ = stdin.write_all(input).await;
            let _ = stdin.shutdown().await;
        }
    };
    let finished = async {
        let (status, stdout, stderr, ()) = tokio::join!(
            child.wait(),
            read_capped(stdout, STDOUT_CAP),
            read_capped(stderr, STDERR_CAP),
            feed
        );
        Ok::<_, std::io::Error>((status?, stdout?, stderr?))
    };
    let mut finished = std::pin::pin!(finished);
    let stop = tokio::select! {
        () = cancel.cancelled() => DriverError::Cancelled { tool, command: name },
        result = tokio::time::timeout(limits.time, finished.as_mut()) => match result {
            Err(_) => DriverError::TimedOut { tool, command: name, limit: limits.time },
            Ok(Err(e)) => return Err(spawn_error(e)),
            Ok(Ok((status, stdout, stderr))) => {
                group.disarm();
                let secrets: Vec<&[u8]> = input.into_iter().chain(secrets.iter().copied()).collect();
                return Ok(exit(name, status, stdout, stderr, &secrets));
            }
        },
    };
    // Keep draining the output while the process shuts down: a full pipe must not block it.
    group.signal(Signal::SIGTERM);
    if tokio::time::timeout(limits.grace, finished.as_mut())
        .await
        .is_err()
    {
        group.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(REAP_WAIT, finished.as_mut()).await;
    }
    Err(stop)
}

/// The [`Exit`] of a process that ran to its end; a failure's stderr is made
/// [`readable`](readable_stderr), with `secrets` redacted.
fn exit(
    command: String,
    status: std::process::ExitStatus,
    stdout: Captured,
    stderr: Captured,
    secrets: &[&[u8]],
) -> Exit {
    if status.success() {
        return Exit::Success(Stdout {
            text: String::from_utf8_lossy(&stdout.kept).into_owned(),
            truncated: stdout.total > stdout.kept.len(),
        });
    }
    let unread = stderr.total - stderr.kept.len();
    Exit::Failure {
        command,
        code: status.code(),
        stderr: readable_stderr(&stderr.kept, unread, secrets),
        stdout: String::from_utf8_lossy(&stdout.kept).into_owned(),
    }
}

/// What was read of a process's output.
#[derive(Debug, Default)]
struct Captured {
    /// The bytes kept (at most the cap).
    kept: Vec<u8>,
    /// How many bytes the process wrote.
    total: usize,
}

/// Reads `reader` to its end, keeping the first `cap` bytes and counting all.
async fn read_capped(
    reader: Option<impl AsyncRead + Unpin>,
    cap: usize,
) -> std::io::Result<Captured> {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return Ok(captured);
    };
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(captured);
        }
        let room = cap.saturating_sub(captured.kept.len());
        captured.kept.extend_from_slice(&chunk[..n.min(room)]);
        captured.total = captured.total.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    const LIMITS: Limits = Limits {
        time: Duration::from_secs(30),
        grace: Duration::from_secs(5),
    };

    #[test]
    fn children_get_only_the_variables_they_need() {
        let cases = [
            ("PATH", true, true),
            ("HOME", true, true),
            ("TMPDIR", true, true),
            ("KUBECONFIG", true, true),
            ("KUBERNETES_SERVICE_HOST", true, true),
            ("KUBERNETES_SERVICE_PORT", true, true),
            ("HTTPS_PROXY", true, true),
            ("https_proxy", true, true),
            ("NO_PROXY", true, true),
            ("no_proxy", true, true),
            ("SSL_CERT_FILE", true, true),
            ("HELM_DRIVER", true, false),
            ("HELM_MAX_HISTORY", true, false),
            // Set by the driver itself, or would change whom helm acts as.
            ("HELM_CACHE_HOME", false, false),
            ("HELM_REGISTRY_CONFIG", false, false),
            ("HELM_KUBETOKEN", false, false),
            ("HELM_KUBEASUSER", false, false),
            ("HELM_NAMESPACE", false, false),
            // The worker's own credentials and settings.
            ("NATS_PASSWORD", false, false),
            ("NATS_TOKEN", false, false),
            ("NATS_CREDS", false, false),
            ("HELMQ_NATS_TOKEN", false, false),
            ("HELMQ_NATS_PASSWORD", false, false),
            ("HELMQ_NATS_CREDS", false, false),
            ("AWS_SECRET_ACCESS_KEY", false, false),
            ("path", false, false),
            ("PATH2", false, false),
            ("", false, false),
        ];
        for (name, helm, kubectl) in cases {
            assert_eq!(passes(Tool::Helm, OsStr::new(name)), helm, "helm: {name}");
            assert_eq!(
                passes(Tool::Kubectl, OsStr::new(name)),
                kubectl,
                "kubectl: {name}"
            );
        }
        let vars = [
            ("PATH", "/bin"),
            ("NATS_PASSWORD", "hunter2"),
            ("HELM_DRIVER", "secret"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            child_env(Tool::Helm, vars.clone()),
            [vars[0].clone(), vars[2].clone()]
        );
        assert_eq!(child_env(Tool::Kubectl, vars.clone()), [vars[0].clone()]);
    }

    #[tokio::test]
    async fn a_huge_stderr_is_cut_and_the_process_drained_to_its_end() {
        let cancel = CancellationToken::new();
        // 4 MiB of stderr: far more than the cap and than a pipe holds.
        let script = "head -c 4194304 /dev/zero | tr '\\0' x >&2; echo done >&2; exit 3";
        let exit = run(sh(script), Tool::Helm, None, &[], LIMITS, &cancel)
            .await
            .unwrap();
        let Exit::Failure { code, stderr, .. } = exit else {
            panic!("{exit:?}");
        };
        assert_eq!(code, Some(3), "the process ran to its end");
        assert!(stderr.starts_with("xxxx"));
        let cap = super::super::output::ERROR_CAP;
        // 4 MiB of x, then `done` and a line break were written; the cap's worth kept.
        let written = 4_194_304 + "done\n".len();
        assert_eq!(
            &stderr[cap..],
            format!("… [truncated {} bytes]", written - cap),
            "the bytes past the read cap count as left out"
        );
    }

    #[tokio::test]
    async fn a_huge_stdout_is_cut_and_says_so() {
        let cancel = CancellationToken::new();
        let script = "head -c 5000000 /dev/zero | tr '\\0' y";
        let Exit::Success(stdout) = run(sh(script), Tool::Helm, None, &[], LIMITS, &cancel)
            .await
            .unwrap()
        else {
            panic!("not a success");
        };
        assert_eq!(stdout.text.len(), STDOUT_CAP);
        assert!(stdout.truncated);
        let Exit::Success(small) = run(sh("echo ok"), Tool::Helm, None, &[], LIMITS, &cancel)
            .await
            .unwrap()
        else {
            panic!("not a success");
        };
        assert_eq!(
            small,
            Stdout {
                text: "ok\n".into(),
                truncated: false
            }
        );
    }

    #[tokio::test]
    async fn a_time_limit_terminates_the_group_gracefully() {
        let cancel = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("terminated");
        // The shell waits on a child of its own: TERM must reach the whole group.
        let script = format!(
            "trap 'echo terminated > {}; exit 1' TERM; sleep 60 & wait",
            mark.display()
        );
        let limits = Limits {
            time: Duration::from_millis(300),
            grace: Duration::from_secs(10),
        };
        let started = std::time::Instant::now();
        let err = run(sh(&script), Tool::Helm, None, &[], limits, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::TimedOut { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no SIGKILL needed"
        );
        assert_eq!(std::fs::read_to_string(&mark).unwrap(), "terminated\n");
    }
}
