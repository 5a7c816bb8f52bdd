//! The day-2 parts of the Helm config, the same in both shapes: `remediation` (what a failed
//! install or upgrade does, and how often it is tried again) and `test` (`helm test` after each
//! successful install or upgrade). Absent, they keep helmq's behaviour without them: a failed
//! deploy stays as Helm left it, and no test runs.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    ConfigError, cut, get, key_of, optional_bool, optional_object, optional_str, wrong_type,
};
use crate::component::{DURATION_PATTERN, parse_go_duration};
use crate::event::MAX_TIMEOUT_SECONDS;

/// Most retries a failed install or upgrade may get within one job run.
pub const MAX_REMEDIATION_RETRIES: u32 = 10;

/// What helmq does when an install or an upgrade fails after Helm wrote a failed revision (a
/// wait timeout, a failed hook, a failed `helm test`). A failure before Helm wrote anything
/// (the chart not found, a rendering error, RBAC refusing the release record) is never
/// remediated. The default does nothing: no retries, the release kept as Helm left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// A failed install: a release that never had a deployed revision.
    #[serde(default, skip_serializing_if = "Remedy::is_default")]
    pub install: Remedy<InstallStrategy>,
    /// A failed upgrade: a release that had a deployed revision before.
    #[serde(default, skip_serializing_if = "Remedy::is_default")]
    pub upgrade: Remedy<UpgradeStrategy>,
}

impl Remediation {
    /// Whether it is the default (nothing remediated).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Remediation::default()
    }
}

/// How a failed install or upgrade is remediated: tried again up to `retries` times within
/// the same job run, then `strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "RemedyWith{S}")]
pub struct Remedy<S: Default + PartialEq> {
    /// Times the failed install or upgrade is tried again within the job's run, 0 to 10
    /// (default 0). Each try has the job's whole timeout.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = MAX_REMEDIATION_RETRIES))]
    pub retries: u32,
    /// What is done after the last failure (default `keep`).
    #[serde(default, skip_serializing_if = "is_default_value")]
    pub strategy: S,
}

impl<S: Default + PartialEq> Remedy<S> {
    /// Whether it is the default: no retries, keep.
    #[must_use]
    pub fn is_default(&self) -> bool {
        self.retries == 0 && self.strategy == S::default()
    }
}

/// What a failed install leaves behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstallStrategy {
    /// The failed release stays as Helm left it.
    #[default]
    Keep,
    /// The failed release is uninstalled (`helm uninstall`).
    Uninstall,
}

/// What a failed upgrade leaves behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpgradeStrategy {
    /// The failed revision stays as Helm left it.
    #[default]
    Keep,
    /// The release is rolled back to its last deployed revision (`helm rollback`).
    Rollback,
}

/// `helm test` after each successful install or upgrade: a failed test is a failed deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmTest {
    /// Run the chart's tests (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable: bool,
    /// `helm test --timeout` (Go duration, 1s to 24h); the job's timeout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

impl HelmTest {
    /// Whether it is the default (no tests).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == HelmTest::default()
    }

    /// The test timeout, `None` when absent (the job's timeout then applies) or invalid (a
    /// validated config has none).
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_deref().and_then(test_timeout)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_default_value<S: Default + PartialEq>(value: &S) -> bool {
    *value == S::default()
}

/// A test timeout from 1 second to 24 hours.
fn test_timeout(text: &str) -> Option<Duration> {
    parse_go_duration(text)
        .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(MAX_TIMEOUT_SECONDS)).contains(d))
}

/// `remediation` and `test` of either shape.
pub(super) fn parse_day2(obj: &Map<String, Value>) -> Result<(Remediation, HelmTest), ConfigError> {
    let remediation =
        match optional_object(obj, "remediation")? {
            None => Remediation::default(),
            Some(remediation) => Remediation {
                install: parse_remedy(remediation, "remediation.install", INSTALL_FIELDS, |s| {
                    match s {
                        "keep" => Some(InstallStrategy::Keep),
                        "uninstall" => Some(InstallStrategy::Uninstall),
                        _ => None,
                    }
                })?,
                upgrade: parse_remedy(remediation, "remediation.upgrade", UPGRADE_FIELDS, |s| {
                    match s {
                        "keep" => Some(UpgradeStrategy::Keep),
                        "rollback" => Some(UpgradeStrategy::Rollback),
                        _ => None,
                    }
                })?,
            },
        };
    let test = match optional_object(obj, "test")? {
        None => HelmTest::default(),
        Some(test) => {
            let enable = optional_bool(test, "test.enable")?.unwrap_or(false);
            let timeout = optional_str(test, "test.timeout")?;
            if let Some(timeout) = timeout {
                check_test_timeout("test.timeout", timeout)?;
            }
            HelmTest {
                enable,
                timeout: timeout.map(str::to_owned),
            }
        }
    };
    Ok((remediation, test))
}

/// The field paths of one side of `remediation`, and the strategies it takes.
struct RemedyFields {
    retries: &'static str,
    strategy: &'static str,
    allowed: &'static str,
}

const INSTALL_FIELDS: RemedyFields = RemedyFields {
    retries: "remediation.install.retries",
    strategy: "remediation.install.strategy",
    allowed: "'keep' or 'uninstall'",
};

const UPGRADE_FIELDS: RemedyFields = RemedyFields {
    retries: "remediation.upgrade.retries",
    strategy: "remediation.upgrade.strategy",
    allowed: "'keep' or 'rollback'",
};

/// `remediation.install` or `remediation.upgrade` (`field`), its strategy read by `strategy`.
fn parse_remedy<S: Default + PartialEq>(
    remediation: &Map<String, Value>,
    field: &'static str,
    fields: RemedyFields,
    strategy: impl Fn(&str) -> Option<S>,
) -> Result<Remedy<S>, ConfigError> {
    let Some(side) = optional_object(remediation, field)? else {
        return Ok(Remedy::default());
    };
    let retries = match get(side, key_of(fields.retries)) {
        None => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= MAX_REMEDIATION_RETRIES)
            .ok_or_else(|| ConfigError::Retries {
                field: fields.retries,
                got: n.to_string(),
            })?,
        Some(other) => return Err(wrong_type(fields.retries, AN_INTEGER, other)),
    };
    let strategy = match optional_str(side, fields.strategy)? {
        None => S::default(),
        Some(text) => strategy(text).ok_or_else(|| ConfigError::Strategy {
            field: fields.strategy,
            allowed: fields.allowed,
            got: cut(text),
        })?,
    };
    Ok(Remedy { retries, strategy })
}

const AN_INTEGER: &str = "an integer";

/// The rules of [`parse_day2`] that a deserialized config can still break.
pub(super) fn validate_day2(remediation: &Remediation, test: &HelmTest) -> Result<(), ConfigError> {
    for (retries, field) in [
        (remediation.install.retries, INSTALL_FIELDS.retries),
        (remediation.upgrade.retries, UPGRADE_FIELDS.retries),
    ] {
        if retries > MAX_REMEDIATION_RETRIES {
            return Err(ConfigError::Retries {
                field,
                got: retries.to_string(),
            });
        }
    }
    if let Some(timeout) = &test.timeout {
        check_test_timeout("test.timeout", timeout)?;
    }
    Ok(())
}

fn check_test_timeout(field: &'static str, value: &str) -> Result<(), ConfigError> {
    match test_timeout(value) {
        Some(_) => Ok(()),
        None => Err(ConfigError::TestTimeout {
            field,
            value: cut(value),
        }),
    }
}
