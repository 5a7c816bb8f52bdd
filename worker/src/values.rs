//! The effective values of an apply: `config.valuesFrom` read with the tenant's rights from the
//! Component's own namespace (by the Helm run), merged in order, the inline `values` on top
//! ([`effective`]); and the digests the status records of what was deployed
//! ([`Digests`]), with which an apply that would change nothing skips Helm ([`unchanged`]).
//!
//! Secret data never leaves this module but in the values file handed to Helm: errors name the
//! object and key, never a value or a parser's excerpt of one.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use helmq_schemas::HelmConfig;
use helmq_schemas::config::{MISSING_SOURCE, ValuesReference, merge_into, place};
use helmq_schemas::event::Deployed;

/// The data of a ConfigMap or Secret (a Secret's decoded), by key; `None`: no such object.
pub type SourceData = Option<BTreeMap<String, Vec<u8>>>;

/// Why the values of a `valuesFrom` reference cannot be used. Never holds any of its data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesError {
    /// A required object is not there.
    #[error(
        "valuesFrom[{index}]: {kind} {namespace}/{name} not found ({MISSING_SOURCE}: the deploy is tried again when it appears, at the producer's next resync, or at once when it carries the label helm.deployment-orchestrator.io/watch: \"true\")"
    )]
    MissingObject {
        /// The reference's index.
        index: usize,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The Component's namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// A required key is not in the object.
    #[error("valuesFrom[{index}]: {kind} {namespace}/{name} has no key {key}")]
    MissingKey {
        /// The reference's index.
        index: usize,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The Component's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// The key's content cannot be used (not UTF-8, not a YAML map).
    #[error("valuesFrom[{index}]: {reference}: {reason}")]
    Unusable {
        /// The reference's index.
        index: usize,
        /// The reference, as `Kind name key K`.
        reference: String,
        /// Why, without the content.
        reason: &'static str,
    },
}

/// The values of `config` as Helm gets them: its `valuesFrom` sources (`sources[i]` read for
/// `config.values_from[i]`), merged in order, then `config.values` on top.
///
/// # Errors
///
/// The first reference whose object or key is missing (unless optional) or unusable.
pub fn effective(
    config: &HelmConfig,
    namespace: &str,
    sources: &[SourceData],
) -> Result<Map<String, Value>, ValuesError> {
    let mut merged = Map::new();
    for (index, (reference, data)) in config.values_from.iter().zip(sources).enumerate() {
        if let Some(values) = values_of(index, reference, namespace, data.as_ref())? {
            merge_into(&mut merged, values);
        }
    }
    merge_into(&mut merged, config.values.clone());
    Ok(merged)
}

/// The values one reference contributes; `None` for a missing optional one.
fn values_of(
    index: usize,
    reference: &ValuesReference,
    namespace: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Option<Map<String, Value>>, ValuesError> {
    let kind = reference.kind.as_str();
    // What is missing is no error when the reference is optional.
    let missing = |error| {
        if reference.optional {
            Ok(None)
        } else {
            Err(error)
        }
    };
    let Some(data) = data else {
        return missing(ValuesError::MissingObject {
            index,
            kind,
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
        });
    };
    let Some(bytes) = data.get(&reference.values_key) else {
        return missing(ValuesError::MissingKey {
            index,
            kind,
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            key: reference.values_key.clone(),
        });
    };
    let unusable = |reason| ValuesError::Unusable {
        index,
        reference: reference.to_string(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| unusable("is not UTF-8 text"))?;
    if let Some(path) = &reference.target_path {
        return place(path, text)
            .map(Some)
            .map_err(|_| unusable("has an invalid targetPath"));
    }
    // The parser's message may quote the content: it is not passed on.
    match serde_saphyr::from_str::<Value>(text) {
        Ok(Value::Object(values)) => Ok(Some(values)),
        Ok(Value::Null) => Ok(Some(Map::new())),
        Ok(_) => Err(unusable("is not a YAML map of values")),
        Err(_) => Err(unusable("is not valid YAML")),
    }
}

/// What the status records of a deploy: the digest of the effective values and of everything
/// else in the config that shapes the Helm run (chart, release, settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// `sha256:<hex>` of the effective values.
    pub values: String,
    /// `sha256:<hex>` of the config without its values and value sources.
    pub config: String,
}

impl Digests {
    /// The digests of `config` deployed with `values`.
    pub fn of(config: &HelmConfig, values: &Map<String, Value>) -> Digests {
        let mut rest = config.clone();
        rest.values = Map::new();
        rest.values_from = Vec::new();
        // Neither is deployed: `adopt` is a permission (the producer sets it once the status
        // records the release, so the first deploy's job and every later one differ in it),
        // `drift` says how the release is watched.
        rest.adopt = false;
        rest.drift = Default::default();
        Digests {
            values: digest(&Value::Object(values.clone())),
            config: digest(&serde_json::to_value(&rest).unwrap_or(Value::Null)),
        }
    }
}

fn digest(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let hash = Sha256::digest(&bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether an apply whose effective values and config give `digests` would change nothing
/// over what `deployed` (from the Component's status, when it is `Ready`) says is deployed.
pub fn unchanged(deployed: Option<&Deployed>, digests: &Digests) -> bool {
    deployed.is_some_and(|d| d.values_digest == digests.values && d.config_digest == digests.config)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(values_from: Value, values: Value) -> HelmConfig {
        let mut raw = json!({
            "releaseName": "web", "releaseNamespace": "team-a",
            "source": {"type": "oci", "chart": "oci://r.example/charts/web:1.0.0"},
        });
        raw["valuesFrom"] = values_from;
        raw["values"] = values;
        HelmConfig::parse(Some(&raw), "team-a", "web").unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> SourceData {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn sources_merge_in_order_under_the_inline_values() {
        let c = config(
            json!([
                {"kind": "ConfigMap", "name": "base"},
                {"kind": "Secret", "name": "db", "valuesKey": "password", "targetPath": "db.password"},
                {"kind": "ConfigMap", "name": "extra", "optional": true},
            ]),
            json!({"replicas": 3}),
        );
        let sources = [
            data(&[("values.yaml", "replicas: 1\ndb:\n  host: pg\n")]),
            data(&[("password", "s3cret")]),
            None,
        ];
        let got = effective(&c, "team-a", &sources).unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"replicas": 3, "db": {"host": "pg", "password": "s3cret"}})
        );
    }

    #[test]
    fn errors_name_the_reference_and_never_its_data() {
        let c = |values_from| config(values_from, json!({}));
        let cases = [
            (
                c(json!([{"kind": "ConfigMap", "name": "gone"}])),
                None,
                "valuesFrom[0]: ConfigMap team-a/gone not found (a required valuesFrom object is missing: the deploy is tried again when it appears, at the producer's next resync, or at once when it carries the label helm.deployment-orchestrator.io/watch: \"true\")",
            ),
            (
                c(json!([{"kind": "Secret", "name": "db"}])),
                data(&[("other", "s3cret")]),
                "valuesFrom[0]: Secret team-a/db has no key values.yaml",
            ),
            (
                c(json!([{"kind": "Secret", "name": "db"}])),
                data(&[("values.yaml", "s3cret: [unclosed")]),
                "valuesFrom[0]: Secret db key values.yaml: is not valid YAML",
            ),
            (
                c(json!([{"kind": "Secret", "name": "db"}])),
                data(&[("values.yaml", "- s3cret")]),
                "valuesFrom[0]: Secret db key values.yaml: is not a YAML map of values",
            ),
        ];
        for (config, source, want) in cases {
            let got = effective(&config, "team-a", &[source])
                .unwrap_err()
                .to_string();
            assert_eq!(got, want);
            assert!(!got.contains("s3cret"));
        }
    }

    #[test]
    fn a_deploy_is_unchanged_only_when_both_digests_match() {
        let c = config(json!([]), json!({"a": 1}));
        let digests = Digests::of(&c, &c.values);
        let deployed = Deployed {
            values_digest: digests.values.clone(),
            config_digest: digests.config.clone(),
        };
        assert!(unchanged(Some(&deployed), &digests));
        assert!(!unchanged(None, &digests));
        let mut other_values = c.values.clone();
        other_values.insert("a".into(), 2.into());
        assert!(!unchanged(Some(&deployed), &Digests::of(&c, &other_values)));
        let mut other_release = c.clone();
        other_release.release_name = "web2".into();
        assert!(!unchanged(
            Some(&deployed),
            &Digests::of(&other_release, &c.values)
        ));
        assert!(digests.values.starts_with("sha256:") && digests.values.len() == 71);
        // Neither `adopt` (the producer sets it once the status records the release) nor how
        // drift is watched is deployed: the first job and a later refresh digest the same.
        let mut later = c.clone();
        later.adopt = true;
        later.drift.mode = helmq_schemas::config::DriftMode::Correct;
        assert!(unchanged(Some(&deployed), &Digests::of(&later, &c.values)));
    }
}
