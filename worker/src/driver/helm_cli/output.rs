//! Reading what Helm prints: the release in `helm upgrade -o json` and `helm status -o json`,
//! the revisions of `helm history -o json`, and the error that means "no such release". Helm's
//! status texts become [`HelmStatus`] here, once.

use serde_json::Value;

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

/// Whether helm failed because the release does not exist.
pub(super) fn is_not_found(error: &DriverError) -> bool {
    matches!(error, DriverError::Helm { stderr, .. } if stderr.to_lowercase().contains("release: not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_missing_release_is_told_by_helms_stderr() {
        let helm = |stderr: &str| DriverError::Helm {
            command: "status".into(),
            exit_code: Some(1),
            stderr: stderr.into(),
        };
        assert!(is_not_found(&helm("Error: release: not found")));
        assert!(is_not_found(&helm(
            "Error: uninstall: Release not loaded: web: release: not found"
        )));
        assert!(!is_not_found(&helm(
            "Error: Kubernetes cluster unreachable"
        )));
        let kubectl = DriverError::Kubectl {
            action: crate::driver::KubectlAction::DeleteNamespace {
                namespace: "apps".into(),
            },
            exit_code: Some(1),
            stderr: "release: not found".into(),
        };
        assert!(!is_not_found(&kubectl), "only helm's own errors count");
    }
}
