//! `drift`, the same in both config shapes: whether and how often the release's live objects
//! are compared with its manifest, what a difference does (`warn`: a `Drifted` condition and an
//! Event; `correct`: the drifted objects are applied again), and which fields are nobody's
//! business (`ignore`: JSON pointers, optionally for one kind or object). Absent: no checks.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ConfigError, cut, get, optional_object, optional_str, wrong_type};
use crate::component::{DURATION_PATTERN, parse_go_duration};

/// How often a release is checked when `drift.interval` is absent.
pub const DEFAULT_DRIFT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The shortest `drift.interval`: each check is a job with three processes (helm and kubectl).
pub const MIN_DRIFT_INTERVAL: Duration = Duration::from_secs(10);
/// The longest `drift.interval`.
pub const MAX_DRIFT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most ignore rules, and most paths in one rule.
pub const MAX_IGNORE_RULES: usize = 32;

/// What a drift check does with a difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// No checks (the default).
    #[default]
    Disabled,
    /// Report it: the `Drifted` condition and a Warning Event naming objects and fields.
    Warn,
    /// Put it back: the drifted objects are applied again, and an Event says what was.
    Correct,
}

/// `config.drift`: drift detection and correction of the release's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetection {
    /// `disabled` (default), `warn` or `correct`.
    #[serde(default, skip_serializing_if = "is_disabled")]
    pub mode: DriftMode,
    /// How often the release is checked (Go duration, 10s to 168h; default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Fields a check leaves alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_IGNORE_RULES))]
    pub ignore: Vec<IgnoreRule>,
}

/// Fields a drift check leaves alone: `paths` of every object, or only of `target`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    /// JSON pointers (RFC 6901) such as `/spec/replicas`; a pointer covers what lies below it.
    #[schemars(length(min = 1, max = MAX_IGNORE_RULES))]
    pub paths: Vec<String>,
    /// The objects the rule is for; every object of the release when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<IgnoreTarget>,
}

/// The objects an [`IgnoreRule`] is for: those of `kind`, and of `name` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreTarget {
    /// The object kind, such as `Deployment`; any kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The object name; any name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl IgnoreRule {
    /// Whether the rule is for the object of `kind` named `name`.
    #[must_use]
    pub fn applies_to(&self, kind: &str, name: &str) -> bool {
        self.target.as_ref().is_none_or(|t| {
            t.kind.as_deref().is_none_or(|k| k == kind)
                && t.name.as_deref().is_none_or(|n| n == name)
        })
    }
}

fn is_disabled(mode: &DriftMode) -> bool {
    *mode == DriftMode::Disabled
}

impl DriftDetection {
    /// Whether it is the default (no checks, nothing else said).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == DriftDetection::default()
    }

    /// Whether releases are checked.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.mode != DriftMode::Disabled
    }

    /// The time between two checks ([`DEFAULT_DRIFT_INTERVAL`] when absent or invalid: a
    /// validated config has no invalid one).
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(drift_interval)
            .unwrap_or(DEFAULT_DRIFT_INTERVAL)
    }
}

fn drift_interval(text: &str) -> Option<Duration> {
    parse_go_duration(text).filter(|d| (MIN_DRIFT_INTERVAL..=MAX_DRIFT_INTERVAL).contains(d))
}

/// `drift` of either shape.
pub(super) fn parse_drift(obj: &Map<String, Value>) -> Result<DriftDetection, ConfigError> {
    let Some(drift) = optional_object(obj, "drift")? else {
        return Ok(DriftDetection::default());
    };
    let mode = match optional_str(drift, "drift.mode")? {
        None => DriftMode::default(),
        Some("disabled") => DriftMode::Disabled,
        Some("warn") => DriftMode::Warn,
        Some("correct") => DriftMode::Correct,
        Some(other) => {
            return Err(ConfigError::Strategy {
                field: "drift.mode",
                allowed: "'disabled', 'warn' or 'correct'",
                got: cut(other),
            });
        }
    };
    let interval = optional_str(drift, "drift.interval")?.map(str::to_owned);
    let ignore = match get(drift, "ignore") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(rules)) => rules
            .iter()
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(wrong_type("drift.ignore", "a list", other)),
    };
    let drift = DriftDetection {
        mode,
        interval,
        ignore,
    };
    validate_drift(&drift)?;
    Ok(drift)
}

fn parse_rule(rule: &Value) -> Result<IgnoreRule, ConfigError> {
    let Value::Object(rule) = rule else {
        return Err(wrong_type("drift.ignore[]", "an object", rule));
    };
    let paths = match get(rule, "paths") {
        Some(Value::Array(paths)) => paths
            .iter()
            .map(|p| match p {
                Value::String(p) => Ok(p.clone()),
                other => Err(wrong_type("drift.ignore[].paths[]", "a string", other)),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => {
            return Err(ConfigError::Required {
                field: "drift.ignore[].paths",
            });
        }
        Some(other) => return Err(wrong_type("drift.ignore[].paths", "a list", other)),
    };
    let target = match optional_object(rule, "drift.ignore[].target")? {
        None => None,
        Some(target) => Some(IgnoreTarget {
            kind: optional_str(target, "drift.ignore[].target.kind")?.map(str::to_owned),
            name: optional_str(target, "drift.ignore[].target.name")?.map(str::to_owned),
        }),
    };
    Ok(IgnoreRule { paths, target })
}

/// The rules of [`parse_drift`] that a deserialized config can still break.
pub(super) fn validate_drift(drift: &DriftDetection) -> Result<(), ConfigError> {
    if let Some(interval) = &drift.interval
        && drift_interval(interval).is_none()
    {
        return Err(ConfigError::DriftInterval {
            value: cut(interval),
        });
    }
    if drift.ignore.len() > MAX_IGNORE_RULES {
        return Err(ConfigError::TooMany {
            field: "drift.ignore",
            count: drift.ignore.len(),
            limit: MAX_IGNORE_RULES,
        });
    }
    for rule in &drift.ignore {
        if rule.paths.is_empty() {
            return Err(ConfigError::Required {
                field: "drift.ignore[].paths",
            });
        }
        if rule.paths.len() > MAX_IGNORE_RULES {
            return Err(ConfigError::TooMany {
                field: "drift.ignore[].paths",
                count: rule.paths.len(),
                limit: MAX_IGNORE_RULES,
            });
        }
        if let Some(bad) = rule.paths.iter().find(|p| !is_pointer(p)) {
            return Err(ConfigError::JsonPointer { value: cut(bad) });
        }
    }
    Ok(())
}

/// An RFC 6901 pointer below the root: `/` then tokens, `~` only as `~0` or `~1`.
fn is_pointer(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    path.len() <= 256
        && !path.chars().any(char::is_control)
        && rest.split('/').all(|token| {
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return false;
                }
            }
            true
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(drift: Value) -> Result<DriftDetection, ConfigError> {
        let Value::Object(obj) = json!({ "drift": drift }) else {
            unreachable!()
        };
        parse_drift(&obj)
    }

    #[test]
    fn a_full_drift_block_parses_and_defaults_fill_the_rest() {
        let drift = parse(json!({
            "mode": "warn",
            "interval": "30s",
            "ignore": [
                {"paths": ["/spec/replicas"], "target": {"kind": "Deployment"}},
                {"paths": ["/data/level", "/metadata/annotations/a~1b"]}
            ]
        }))
        .unwrap();
        assert_eq!(drift.mode, DriftMode::Warn);
        assert_eq!(drift.interval(), Duration::from_secs(30));
        assert!(drift.ignore[0].applies_to("Deployment", "web"));
        assert!(!drift.ignore[0].applies_to("StatefulSet", "web"));
        assert!(drift.ignore[1].applies_to("ConfigMap", "any"));
        let none = parse(json!({})).unwrap();
        assert!(none.is_default() && !none.enabled());
        assert_eq!(none.interval(), DEFAULT_DRIFT_INTERVAL);
        let mut obj = Map::new();
        obj.insert("values".into(), json!({}));
        assert!(parse_drift(&obj).unwrap().is_default());
    }

    #[test]
    fn bad_drift_blocks_name_the_field() {
        let cases = [
            (
                json!({"mode": "fix"}),
                "drift.mode must be 'disabled', 'warn' or 'correct', got \"fix\"",
            ),
            (
                json!({"mode": "warn", "interval": "1s"}),
                "drift.interval must be a duration from 10s to 168h (like 30s, 5m or 1h30m), got \"1s\"",
            ),
            (
                json!({"ignore": {"paths": []}}),
                "drift.ignore must be a list, got object",
            ),
            (
                json!({"ignore": [{"paths": ["spec/replicas"]}]}),
                "drift.ignore[].paths must hold JSON pointers such as /spec/replicas, got \"spec/replicas\"",
            ),
            (
                json!({"ignore": [{"paths": ["/a~2"]}]}),
                "drift.ignore[].paths must hold JSON pointers such as /spec/replicas, got \"/a~2\"",
            ),
            (
                json!({"ignore": [{"target": {"kind": "Deployment"}}]}),
                "drift.ignore[].paths is required",
            ),
            (
                json!({"ignore": [{"paths": []}]}),
                "drift.ignore[].paths is required",
            ),
            (
                json!({"ignore": [{"paths": [3]}]}),
                "drift.ignore[].paths[] must be a string, got number",
            ),
        ];
        for (drift, want) in cases {
            assert_eq!(
                parse(drift.clone()).unwrap_err().to_string(),
                want,
                "{drift}"
            );
        }
    }
}
