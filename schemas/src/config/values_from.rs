//! `config.valuesFrom`: values kept in ConfigMaps and Secrets of the Component's own namespace.
//! Parsed and checked here ([`parse`], [`check`]); merged in order, under the inline `values`,
//! by [`merge_into`] and [`place`] (Helm's own rule: maps merge key by key, anything else is
//! replaced). The worker reads the objects, with the tenant's rights, when it runs the job, so
//! their data never travels on NATS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ConfigError, kind};
use crate::dns;

/// The key read when a reference names none.
pub const DEFAULT_VALUES_KEY: &str = "values.yaml";
/// Words the `Failed` message of a deploy whose required `valuesFrom` object is missing
/// contains: the producer applies such a Component again at each resync, so it is retried when
/// the object appears (at once when the object carries the watch label).
pub const MISSING_SOURCE: &str = "a required valuesFrom object is missing";
/// Most references one config may hold.
pub const MAX_VALUES_FROM: usize = 32;
/// Longest `valuesKey` (a ConfigMap or Secret key).
const MAX_KEY_LEN: usize = 253;
/// Longest `targetPath`.
const MAX_TARGET_PATH_LEN: usize = 250;

/// One source of values: a key of a ConfigMap or Secret in the Component's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `ConfigMap` or `Secret`.
    pub kind: ValuesKind,
    /// The object's name, in the Component's own namespace.
    pub name: String,
    /// The key to read; `values.yaml` when absent.
    #[serde(default = "default_values_key")]
    pub values_key: String,
    /// A dotted path (`db.password`) where the key's text is placed as one string value;
    /// without it the key holds a YAML map of values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// A missing object or key is skipped instead of failing the deploy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

fn default_values_key() -> String {
    DEFAULT_VALUES_KEY.to_owned()
}

/// The kind of object values come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ValuesKind {
    /// A ConfigMap (`data`).
    ConfigMap,
    /// A Secret (`data`, base64-decoded).
    Secret,
}

impl ValuesKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ValuesKind::ConfigMap => "ConfigMap",
            ValuesKind::Secret => "Secret",
        }
    }
}

impl std::fmt::Display for ValuesReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} key {}",
            self.kind.as_str(),
            self.name,
            self.values_key
        )
    }
}

/// `valuesFrom` of a config object: absent or null is empty.
pub(super) fn parse(obj: &Map<String, Value>) -> Result<Vec<ValuesReference>, ConfigError> {
    let items = match obj.get("valuesFrom") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ConfigError::WrongType {
                field: "valuesFrom",
                expected: "an array",
                got: kind(other),
            });
        }
    };
    if items.len() > MAX_VALUES_FROM {
        return Err(ConfigError::TooManyValuesFrom {
            count: items.len(),
            limit: MAX_VALUES_FROM,
        });
    }
    let references = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_one(item).map_err(|reason| invalid(index, reason)))
        .collect::<Result<Vec<_>, _>>()?;
    check(&references)?;
    Ok(references)
}

fn invalid(index: usize, reason: String) -> ConfigError {
    ConfigError::ValuesFrom { index, reason }
}

/// One reference, shape only (its values are checked by [`check`]).
fn parse_one(item: &Value) -> Result<ValuesReference, String> {
    let Value::Object(item) = item else {
        return Err(format!("must be an object, got {}", kind(item)));
    };
    let text = |key: &str| match item.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be a string, got {}", kind(other))),
    };
    let kind = match text("kind")?.as_deref() {
        Some("ConfigMap") => ValuesKind::ConfigMap,
        Some("Secret") => ValuesKind::Secret,
        None => return Err("kind is required (ConfigMap or Secret)".to_owned()),
        Some(other) => return Err(format!("kind must be ConfigMap or Secret, got {other:?}")),
    };
    let optional = match item.get("optional") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "optional must be a boolean, got {}",
                self::kind(other)
            ));
        }
    };
    Ok(ValuesReference {
        kind,
        name: text("name")?.unwrap_or_default(),
        values_key: text("valuesKey")?.unwrap_or_else(default_values_key),
        target_path: text("targetPath")?,
        optional,
    })
}

/// Checks every reference's name, key and target path (also of a config received in a job).
///
/// # Errors
///
/// [`ConfigError::ValuesFrom`] naming the first offending reference and field.
pub(super) fn check(references: &[ValuesReference]) -> Result<(), ConfigError> {
    if references.len() > MAX_VALUES_FROM {
        return Err(ConfigError::TooManyValuesFrom {
            count: references.len(),
            limit: MAX_VALUES_FROM,
        });
    }
    for (index, reference) in references.iter().enumerate() {
        check_one(reference).map_err(|reason| invalid(index, reason))?;
    }
    Ok(())
}

fn check_one(reference: &ValuesReference) -> Result<(), String> {
    if reference.name.trim().is_empty() {
        return Err("name is required".to_owned());
    }
    if !dns::is_subdomain(&reference.name) {
        return Err(format!(
            "name must be a DNS-1123 subdomain of at most 253 characters, got {:?}",
            cut(&reference.name)
        ));
    }
    let key = &reference.values_key;
    let key_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(key_chars) {
        return Err(format!(
            "valuesKey must be a ConfigMap or Secret key (letters, digits, '-', '_' and '.', at most {MAX_KEY_LEN} characters), got {:?}",
            cut(key)
        ));
    }
    if let Some(path) = &reference.target_path
        && split_path(path).is_none()
    {
        return Err(format!(
            "targetPath must be dotted keys of letters, digits, '-' and '_' (like db.password), at most {MAX_TARGET_PATH_LEN} characters, got {:?}",
            cut(path)
        ));
    }
    Ok(())
}

fn cut(value: &str) -> String {
    value.chars().take(64).collect()
}

/// The keys of a dotted path, or `None` when it is not one.
fn split_path(path: &str) -> Option<Vec<&str>> {
    let key_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    let keys: Vec<&str> = path.split('.').collect();
    let valid = path.len() <= MAX_TARGET_PATH_LEN
        && keys
            .iter()
            .all(|k| !k.is_empty() && k.chars().all(key_chars));
    valid.then_some(keys)
}

/// Merges `overlay` into `base` as Helm merges values files: a map merges key by key, anything
/// else (a list, a scalar, null) replaces what was there.
pub fn merge_into(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(into)), Value::Object(from)) => merge_into(into, from),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `text` placed at the dotted `path` as one string value (the maps on the way created or
/// merged into), as a map to merge.
///
/// # Errors
///
/// A message when `path` is not a dotted path (a parsed config's always is).
pub fn place(path: &str, text: &str) -> Result<Map<String, Value>, String> {
    let keys = split_path(path).ok_or_else(|| format!("invalid targetPath {:?}", cut(path)))?;
    let mut value = Value::String(text.to_owned());
    for key in keys.iter().rev() {
        let mut map = Map::new();
        map.insert((*key).to_owned(), value);
        value = Value::Object(map);
    }
    match value {
        Value::Object(map) => Ok(map),
        // `split_path` never gives an empty list.
        _ => Err(format!("invalid targetPath {:?}", cut(path))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn references_parse_with_defaults_and_each_error_names_the_reference() {
        let parsed = parse(&map(json!({"valuesFrom": [
            {"kind": "ConfigMap", "name": "app-values"},
            {"kind": "Secret", "name": "db", "valuesKey": "password", "targetPath": "db.auth.password", "optional": true},
        ]})))
        .unwrap();
        assert_eq!(parsed[0].values_key, "values.yaml");
        assert_eq!(parsed[0].target_path, None);
        assert!(!parsed[0].optional);
        assert_eq!(parsed[1].target_path.as_deref(), Some("db.auth.password"));
        assert!(parsed[1].optional);
        assert_eq!(parse(&map(json!({"valuesFrom": null}))).unwrap(), vec![]);

        let cases = [
            (json!("x"), "valuesFrom must be an array, got string"),
            (json!([1]), "valuesFrom[0]: must be an object, got number"),
            (
                json!([{"name": "a"}]),
                "valuesFrom[0]: kind is required (ConfigMap or Secret)",
            ),
            (
                json!([{"kind": "ConfigMap", "name": "a"}, {"kind": "Pod", "name": "b"}]),
                "valuesFrom[1]: kind must be ConfigMap or Secret, got \"Pod\"",
            ),
            (
                json!([{"kind": "Secret"}]),
                "valuesFrom[0]: name is required",
            ),
            (
                json!([{"kind": "Secret", "name": "../etc"}]),
                "valuesFrom[0]: name must be a DNS-1123 subdomain of at most 253 characters, got \"../etc\"",
            ),
            (
                json!([{"kind": "Secret", "name": "a", "valuesKey": "a/b"}]),
                "valuesFrom[0]: valuesKey must be a ConfigMap or Secret key (letters, digits, '-', '_' and '.', at most 253 characters), got \"a/b\"",
            ),
            (
                json!([{"kind": "Secret", "name": "a", "targetPath": "a..b"}]),
                "valuesFrom[0]: targetPath must be dotted keys of letters, digits, '-' and '_' (like db.password), at most 250 characters, got \"a..b\"",
            ),
            (
                json!([{"kind": "Secret", "name": "a", "optional": "yes"}]),
                "valuesFrom[0]: optional must be a boolean, got string",
            ),
        ];
        for (value, want) in cases {
            let got = parse(&map(json!({ "valuesFrom": value }))).unwrap_err();
            assert_eq!(got.to_string(), want);
        }
        let many = vec![json!({"kind": "Secret", "name": "a"}); MAX_VALUES_FROM + 1];
        assert_eq!(
            parse(&map(json!({ "valuesFrom": many })))
                .unwrap_err()
                .to_string(),
            "valuesFrom has 33 references; at most 32 are allowed"
        );
    }

    #[test]
    fn values_merge_as_helm_merges_values_files() {
        let mut base = map(json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"}));
        merge_into(
            &mut base,
            map(json!({"a": {"c": [3], "e": true}, "d": {"now": "a map"}})),
        );
        assert_eq!(
            Value::Object(base),
            json!({"a": {"b": 1, "c": [3], "e": true}, "d": {"now": "a map"}})
        );
        let mut base = map(json!({"db": {"host": "h"}}));
        merge_into(&mut base, place("db.auth.password", "s3cret: 1").unwrap());
        assert_eq!(
            Value::Object(base),
            json!({"db": {"host": "h", "auth": {"password": "s3cret: 1"}}})
        );
        assert!(place("a..b", "x").is_err());
    }
}
