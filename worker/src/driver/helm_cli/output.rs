//! Reading what Helm prints: the release in `helm upgrade -o json` and `helm status -o json`,
//! the revisions of `helm history -o json`, and the error that means "no such release". Helm's
//! status texts become [`HelmStatus`] here, once. And what helm and kubectl print on failure,
//! made fit to go anywhere ([`readable_stderr`]).

use std::collections::BTreeMap;

use serde_json::Value;

use helmq_schemas::config::ValuesKind;

use super::process::{STDOUT_CAP, Stdout};
use crate::driver::{DriverError, HelmStatus, Release, Revision};

/// What is wrong with Helm's output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// It is not the JSON document `-o json` promises.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// It was longer than the worker keeps, and the part kept is not a whole JSON document.
    #[error("the output was cut at {limit} bytes: {source}")]
    Truncated {
        /// The bytes kept.
        limit: usize,
        /// Why the part kept cannot be read.
        source: serde_json::Error,
    },
    /// The release has no `version`.
    #[error("no release version in the output")]
    NoVersion,
    /// The release has no `info.status`.
    #[error("no info.status in the output")]
    NoStatus,
    /// `helm pull` succeeded but left no package.
    #[error("no chart package was written")]
    NoPackage,
    /// `helm get manifest` printed something other than YAML objects.
    #[error(transparent)]
    Manifest(#[from] crate::drift::ManifestError),
    /// The dry run answered other objects than it was given.
    #[error("the dry run answered other objects than the manifest holds")]
    Mismatched,
    /// kubectl's answer was cut short: comparing part of the objects would miss drift.
    #[error("the output was cut at {STDOUT_CAP} bytes")]
    Cut,
}

/// The objects of kubectl's `-o json` answer: a `List`'s items, one object, or none (no
/// output: every object was missing).
pub(super) fn parse_objects(stdout: &Stdout) -> Result<Vec<Value>, OutputError> {
    if stdout.text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut value: Value = json(stdout)?;
    let list = value.get("kind").and_then(Value::as_str) == Some("List");
    Ok(match value.get_mut("items") {
        Some(Value::Array(items)) if list => std::mem::take(items),
        _ => vec![value],
    })
}

/// Reads the release from `helm upgrade -o json` or `helm status -o json`.
pub(super) fn parse_release(command: &str, stdout: &Stdout) -> Result<Release, DriverError> {
    let bad = |reason: OutputError| DriverError::Output {
        command: command.to_owned(),
        reason,
    };
    let value: Value = json(stdout).map_err(bad)?;
    let revision = value
        .get("version")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(OutputError::NoVersion))?;
    let status = value
        .pointer("/info/status")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(OutputError::NoStatus))?;
    let chart_version = value
        .pointer("/chart/metadata/version")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Release {
        revision,
        status: HelmStatus::from(status),
        chart_version,
    })
}

/// Reads the revisions of `helm history -o json`.
pub(super) fn parse_history(stdout: &Stdout) -> Result<Vec<Revision>, DriverError> {
    json(stdout).map_err(|reason| DriverError::Output {
        command: "history".into(),
        reason,
    })
}

/// kubectl's `{.metadata.labels}` of an object: a JSON map, or nothing when it has no labels;
/// `None` when it is something else.
pub(super) fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    if text.trim().is_empty() {
        return Some(BTreeMap::new());
    }
    serde_json::from_str(text).ok()
}

/// The data of a ConfigMap (`data`, and `binaryData` decoded) or Secret (`data` decoded) from
/// `kubectl get -o json`. The reason of an error never quotes the object.
pub(super) fn source_data(
    kind: ValuesKind,
    text: &str,
) -> Result<BTreeMap<String, Vec<u8>>, &'static str> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Object {
        #[serde(default)]
        data: BTreeMap<String, String>,
        #[serde(default)]
        binary_data: BTreeMap<String, String>,
    }
    use base64::Engine as _;
    let object: Object =
        serde_json::from_str(text).map_err(|_| "kubectl printed no readable object")?;
    let decode = |encoded: &String| {
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a key is not valid base64")
    };
    let mut data = BTreeMap::new();
    match kind {
        ValuesKind::ConfigMap => {
            for (key, value) in object.data {
                data.insert(key, value.into_bytes());
            }
            for (key, value) in &object.binary_data {
                data.insert(key.clone(), decode(value)?);
            }
        }
        ValuesKind::Secret => {
            for (key, value) in &object.data {
                data.insert(key.clone(), decode(value)?);
            }
        }
    }
    Ok(data)
}

/// The JSON document in `stdout`; one that fails to parse after being cut says so.
fn json<T: serde::de::DeserializeOwned>(stdout: &Stdout) -> Result<T, OutputError> {
    serde_json::from_str(&stdout.text).map_err(|source| {
        if stdout.truncated {
            OutputError::Truncated {
                limit: STDOUT_CAP,
                source,
            }
        } else {
            OutputError::Json(source)
        }
    })
}

/// The longest failure text of helm or kubectl that goes anywhere: a status event, a
/// Component's status, a log line or a dead-letter reason.
pub(super) const ERROR_CAP: usize = 4 * 1024;

/// What a person reading a failure needs from a process's stderr `raw` (of which `unread`
/// more bytes were not kept):
///
/// - every one of `secrets` (what the driver sent as a password or token) is redacted first;
/// - terminal escape sequences and control characters are removed, tabs become spaces and
///   carriage returns line breaks; line breaks are kept;
/// - Helm's own log lines (`level=WARN msg=...`, with or without `time=`) and pflag's
///   deprecation notices are dropped, unless nothing else is left;
/// - the `Error...`/`error: ...` lines come first, then the rest in order;
/// - the text is cut at [`ERROR_CAP`] bytes, ending `… [truncated N bytes]` with the number of
///   bytes left out (those not read included).
pub(super) fn readable_stderr(raw: &[u8], unread: usize, secrets: &[&[u8]]) -> String {
    let mut text = String::from_utf8_lossy(raw).into_owned();
    for secret in secrets {
        let secret = String::from_utf8_lossy(secret);
        let secret = secret.trim();
        if !secret.is_empty() {
            text = text.replace(secret, "<redacted>");
        }
    }
    let text = without_controls(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (noise, said): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| is_noise(l));
    let said = if said.is_empty() { noise } else { said };
    let (errors, rest): (Vec<&str>, Vec<&str>) = said.iter().partition(|l| is_error_line(l));
    let text = errors
        .into_iter()
        .chain(rest)
        .collect::<Vec<_>>()
        .join("\n");
    cap(text, unread)
}

/// `text` cut at [`ERROR_CAP`] bytes (on a character boundary) with a marker saying how many
/// bytes were left out, `unread` included.
fn cap(mut text: String, unread: usize) -> String {
    if text.len() <= ERROR_CAP && unread == 0 {
        return text;
    }
    let mut end = text.len().min(ERROR_CAP);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = text.len() - end + unread;
    text.truncate(end);
    text.push_str(&format!("… [truncated {left_out} bytes]"));
    text
}

/// `text` without terminal escape sequences (CSI `ESC [ ... final`, and other `ESC x` pairs)
/// and control characters; tabs become spaces, carriage returns line breaks.
fn without_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\u{1b}' => {
                if chars.next_if_eq(&'[').is_some() {
                    // Parameters and intermediates up to the final byte (@ to ~).
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A line of Helm's own logging (Go's slog text format, as Helm 4 prints it) or a flag
/// deprecation notice: nothing a person needs to see first, or at all.
fn is_noise(line: &str) -> bool {
    let line = line.trim_start();
    let line = match line.strip_prefix("time=") {
        Some(rest) => rest.split_once(' ').map_or("", |(_, r)| r.trim_start()),
        None => line,
    };
    line.starts_with("level=")
        || (line.starts_with("Flag --") && line.contains(" has been deprecated"))
        || (line.starts_with("Flag shorthand -") && line.contains(" has been deprecated"))
}

/// A line that says what failed: helm's `Error: ...`, kubectl's `error: ...` and
/// `Error from server (...)`.
fn is_error_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("Error") || line.starts_with("error:")
}

/// Whether `helm test`'s report on stdout (the status printer's `TEST SUITE:` blocks, printed
/// once Helm loaded the release and ran its tests) shows a test whose phase is `Failed`: the
/// tests ran and one failed or did not finish in time, rather than Helm failing to run them.
pub(super) fn a_test_failed(stdout: &str) -> bool {
    stdout.lines().any(|line| {
        line.trim_start()
            .strip_prefix("Phase:")
            .is_some_and(|phase| phase.trim() == "Failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_test_is_read_from_helms_test_suite_report() {
        let report = |phases: &[&str]| {
            let mut text = "NAME: web\nNAMESPACE: apps\nSTATUS: deployed\nREVISION: 2\n".to_owned();
            for (i, phase) in phases.iter().enumerate() {
                text.push_str(&format!(
                    "TEST SUITE:     web-test-{i}\nLast Started:   Mon Nov 30 10:00:00 2026\nLast Completed: Mon Nov 30 10:00:01 2026\nPhase:          {phase}\n"
                ));
            }
            text
        };
        let cases = [
            (report(&["Succeeded"]), false),
            (report(&["Succeeded", "Failed"]), true),
            (report(&["Failed"]), true),
            (report(&[]), false),
            ("TEST SUITE: None\n".to_owned(), false),
            // Helm failed before it loaded the release: no report.
            (String::new(), false),
            ("Phase: Failedx\n".to_owned(), false),
        ];
        for (stdout, want) in cases {
            assert_eq!(a_test_failed(&stdout), want, "{stdout}");
        }
    }

    #[test]
    fn labels_are_read_as_kubectl_prints_them() {
        let text = r#"{"createdAt":"1764000000","helmq.io/lease-revision":"4711","name":"web","owner":"helm","status":"pending-upgrade","version":"3"}"#;
        let labels = parse_labels(text).expect("a map");
        assert_eq!(
            labels.get(crate::driver::LEASE_LABEL).map(String::as_str),
            Some("4711")
        );
        assert_eq!(labels.len(), 6);
        // No labels at all prints nothing; anything but a map of strings is unreadable.
        assert_eq!(parse_labels(""), Some(BTreeMap::new()));
        assert_eq!(parse_labels("[1]"), None);
        assert_eq!(parse_labels(r#"{"a":1}"#), None);
    }

    fn out(text: &str) -> Stdout {
        Stdout {
            text: text.into(),
            truncated: false,
        }
    }

    #[test]
    fn release_output_is_read_from_json() {
        let text = r#"{"name":"web","info":{"status":"deployed"},"chart":{"metadata":{"version":"15.4.2"}},"version":4}"#;
        assert_eq!(
            parse_release("upgrade", &out(text)).unwrap(),
            Release {
                revision: 4,
                status: HelmStatus::Deployed,
                chart_version: Some("15.4.2".into())
            }
        );
        let pending = r#"{"info":{"status":"pending-upgrade"},"version":5}"#;
        assert_eq!(
            parse_release("status", &out(pending)).unwrap(),
            Release {
                revision: 5,
                status: HelmStatus::PendingUpgrade,
                chart_version: None
            }
        );
        let cases = [
            (
                "Release \"web\" has been upgraded",
                "cannot read the output of helm upgrade: expected value at line 1 column 1",
            ),
            (
                r#"{"info":{"status":"deployed"}}"#,
                "cannot read the output of helm upgrade: no release version in the output",
            ),
            (
                r#"{"version":1,"info":{}}"#,
                "cannot read the output of helm upgrade: no info.status in the output",
            ),
        ];
        for (text, want) in cases {
            let err = parse_release("upgrade", &out(text)).unwrap_err();
            assert!(matches!(err, DriverError::Output { .. }), "{err:?}");
            assert_eq!(err.to_string(), want);
        }
        let json = parse_release("upgrade", &out("{")).unwrap_err();
        let cause = std::error::Error::source(&json).and_then(|s| s.downcast_ref::<OutputError>());
        assert!(matches!(cause, Some(OutputError::Json(_))), "{json:?}");
        let cut = Stdout {
            text: r#"{"version":1,"info":{"sta"#.into(),
            truncated: true,
        };
        let err = parse_release("upgrade", &cut).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read the output of helm upgrade: the output was cut at {STDOUT_CAP} bytes: \
                 EOF while parsing a string at line 1 column 25"
            )
        );
        let err = parse_history(&Stdout {
            text: "[".into(),
            truncated: true,
        })
        .unwrap_err();
        assert!(err.to_string().contains("the output was cut at"), "{err}");
    }

    #[test]
    fn history_output_is_read_from_json() {
        let text = r#"[{"revision":1,"updated":"2024-01-01T00:00:00Z","status":"superseded","chart":"nginx-1.2.3","app_version":"1.25","description":"Install complete"},
                     {"revision":2,"status":"pending-upgrade","chart":"nginx-1.2.4","description":"Preparing upgrade"},
                     {"revision":3,"status":"something-new"}]"#;
        let history = parse_history(&out(text)).unwrap();
        let statuses: Vec<_> = history.iter().map(|r| r.status.clone()).collect();
        assert_eq!(
            statuses,
            [
                HelmStatus::Superseded,
                HelmStatus::PendingUpgrade,
                HelmStatus::Unknown("something-new".into())
            ]
        );
        assert_eq!(history[0].chart, "nginx-1.2.3");
        assert_eq!(history[2].chart, "");
        assert!(matches!(
            parse_history(&out("Error")),
            Err(DriverError::Output { .. })
        ));
    }

    #[test]
    fn failures_read_error_first_without_logs_controls_or_secrets() {
        let wait_timeout = "level=WARN msg=\"upgrade failed\" name=web error=\"resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/1\\ncontext deadline exceeded\"\n\
            level=INFO msg=\"waiting for resources\" count=3\n\
            Error: UPGRADE FAILED: resource Deployment/apps/web not ready. status: InProgress, message: Available: 0/1\ncontext deadline exceeded\n";
        /// Why, stderr, secrets, what is shown.
        type Case<'a> = (&'a str, &'a [u8], &'a [&'a [u8]], &'a str);
        let cases: &[Case<'_>] = &[
            (
                "a wait timeout leads with helm's Error line, log lines dropped",
                wait_timeout.as_bytes(),
                &[],
                "Error: UPGRADE FAILED: resource Deployment/apps/web not ready. status: \
                 InProgress, message: Available: 0/1\ncontext deadline exceeded",
            ),
            (
                "slog lines with a time and pflag deprecation notices are dropped",
                b"time=2026-11-29T12:00:00Z level=DEBUG msg=x\nFlag --atomic has been deprecated, use --rollback-on-failure\nError: boom\n",
                &[],
                "Error: boom",
            ),
            (
                "other lines follow the Error line in their order",
                b"walk.go:74: found symbolic link\nError: INSTALLATION FAILED: x\nhint: y\n",
                &[],
                "Error: INSTALLATION FAILED: x\nwalk.go:74: found symbolic link\nhint: y",
            ),
            (
                "kubectl's errors come first too",
                b"Warning: deprecated\nError from server (Forbidden): nope\n",
                &[],
                "Error from server (Forbidden): nope\nWarning: deprecated",
            ),
            (
                "only log lines: they are all there is to show",
                b"level=ERROR msg=\"killed\"\n",
                &[],
                "level=ERROR msg=\"killed\"",
            ),
            (
                "terminal escapes and control characters go; tabs and CR become space and break",
                b"\x1b[31mError:\x1b[0m bad\tthing\x07\x00\r\nnext\rline\x1b]\x7f",
                &[],
                "Error: bad thing\nnext\nline",
            ),
            (
                "secrets the driver used are redacted, before anything else",
                b"Error: login to registry.example.com failed: hunter2 rejected (hunter2)\n",
                &[b"hunter2\n", b"", b"  "],
                "Error: login to registry.example.com failed: <redacted> rejected (<redacted>)",
            ),
            (
                "a secret split by a control character is still redacted before it is removed",
                b"Error: token s3cr\x1bt\n",
                &[b"s3cr\x1bt"],
                "Error: token <redacted>",
            ),
            ("nothing at all", b"", &[], ""),
        ];
        for (why, raw, secrets, want) in cases {
            assert_eq!(readable_stderr(raw, 0, secrets), *want, "{why}");
        }
    }

    #[test]
    fn a_2_mib_stderr_is_cut_to_the_cap_with_a_marker() {
        let mut raw = b"level=WARN msg=noise\n".repeat(1000);
        raw.extend_from_slice(b"Error: UPGRADE FAILED: the reason\n");
        raw.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
        raw.extend_from_slice("é\n".as_bytes());
        let text = readable_stderr(&raw, 0, &[]);
        assert!(
            text.starts_with("Error: UPGRADE FAILED: the reason\nxxx"),
            "{}",
            &text[..80]
        );
        let marker = text.rfind("… [truncated ").unwrap();
        assert_eq!(marker, ERROR_CAP);
        let total = "Error: UPGRADE FAILED: the reason\n".len() + 2 * 1024 * 1024 + "é".len();
        assert!(
            text.ends_with(&format!("… [truncated {} bytes]", total - ERROR_CAP)),
            "{}",
            &text[marker..]
        );
        // Bytes that were never read count as left out, even when the rest fits.
        assert_eq!(
            readable_stderr(b"Error: x", 10, &[]),
            "Error: x… [truncated 10 bytes]"
        );
        // A cut never splits a character.
        let wide = "é".repeat(ERROR_CAP);
        let text = readable_stderr(wide.as_bytes(), 0, &[]);
        assert!(text.starts_with(&"é".repeat(ERROR_CAP / 2)));
        assert!(
            text.ends_with(&format!("… [truncated {} bytes]", ERROR_CAP)),
            "{}",
            &text[ERROR_CAP - 10..]
        );
    }
}
