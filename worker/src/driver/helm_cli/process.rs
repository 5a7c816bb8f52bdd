//! Running `helm` and `kubectl`: every process runs with `kill_on_drop`, its output captured,
//! its stdin closed (or fed and then closed), a time limit of its own and a cancellation token.
//! A timeout or a cancel drops the child, and dropping it kills the process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::driver::{DriverError, Tool};

/// How a process that ran to its end exited.
#[derive(Debug)]
pub(super) enum Exit {
    /// Exit status 0, with its stdout.
    Success(String),
    /// Any other exit.
    Failure {
        /// The subcommand (the first argument).
        command: String,
        /// The exit code, `None` when a signal killed the process.
        code: Option<i32>,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

/// Runs `command` (program and arguments set) to its end, within `limit`, writing `input`
/// (when given) to its stdin and then closing it.
///
/// # Errors
///
/// [`DriverError::Spawn`] when it cannot start or its output cannot be read,
/// [`DriverError::TimedOut`] and [`DriverError::Cancelled`] (the process is killed).
pub(super) async fn run(
    mut command: Command,
    tool: Tool,
    input: Option<&[u8]>,
    limit: Duration,
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
        .kill_on_drop(true);
    let spawn_error = |source| DriverError::Spawn {
        program: program.clone(),
        needed_to: None,
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let stdin = child.stdin.take();
    let feed = async move {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            // A process that exits without reading its stdin fails on its own; its exit status
            // and stderr tell why, so a broken pipe here is not an error of its own.
            let _ = stdin.write_all(input).await;
            let _ = stdin.shutdown().await;
        }
    };
    // Dropping `output` (cancel or timeout) drops the child, and kill_on_drop kills it.
    let output = async move {
        let (output, ()) = tokio::join!(child.wait_with_output(), feed);
        output
    };
    let output = tokio::select! {
        () = cancel.cancelled() => return Err(DriverError::Cancelled { tool, command: name }),
        result = tokio::time::timeout(limit, output) => match result {
            Err(_) => return Err(DriverError::TimedOut { tool, command: name, limit }),
            Ok(Err(e)) => return Err(spawn_error(e)),
            Ok(Ok(output)) => output,
        },
    };
    if output.status.success() {
        return Ok(Exit::Success(
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ));
    }
    Ok(Exit::Failure {
        command: name,
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
