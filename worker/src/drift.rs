//! Drift (`config.drift`), as pure functions: the objects of a release's manifest as Helm
//! applies them ([`manifest_objects`]), which of them differ from the live cluster
//! ([`detect`]) and what to apply to put them back ([`correction`]).
//!
//! The comparison is not textual. For each object the driver asks the API server what applying
//! the manifest's object would make of it (a server-side dry run as Helm's field manager,
//! `helm`) and reads the object as it is; [`detect`] compares the two as JSON. A field the
//! manifest does not set, or that the server defaults, is the same on both sides, so only what
//! the release owns can differ: a replica count scaled by hand, a value edited, an object
//! deleted. Fields the server keeps for itself (`status`, `managedFields`, `resourceVersion`,
//! `generation`, ...) are not compared, and `config.drift.ignore` rules remove more.

use helmq_schemas::config::IgnoreRule;
use helmq_schemas::event::{DriftReport, DriftedObject, MAX_DRIFT_ITEMS};
use serde_json::{Map, Value};

/// Helm's field manager: the name Helm applies objects under (the basename of its binary).
pub const FIELD_MANAGER: &str = "helm";

/// Paths the API server writes itself, never compared.
const SERVER_FIELDS: [&str; 7] = [
    "/status",
    "/metadata/managedFields",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/creationTimestamp",
    "/metadata/uid",
    "/metadata/selfLink",
];

/// One object of a release in its three states.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectState {
    /// As the manifest has it, with Helm's ownership metadata: what a correction applies.
    pub applied: Value,
    /// What applying `applied` would make of it (the server's dry run).
    pub desired: Value,
    /// As it is now; `None` when it is gone.
    pub live: Option<Value>,
}

/// A drifted object: which one of the states, and what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its index in the states given to [`detect`].
    pub index: usize,
    /// What the report says of it (every differing field, not yet cut to the report's limit).
    pub object: DriftedObject,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the release's manifest is not YAML objects: {0}")]
pub struct ManifestError(String);

/// The objects of a Helm manifest (`helm get manifest`) as Helm applies them: each with the
/// `app.kubernetes.io/managed-by: Helm` label and the `meta.helm.sh/release-name` and
/// `-namespace` annotations Helm adds, so a server-side dry run under Helm's field manager
/// neither adds nor drops them. Empty documents are skipped.
///
/// # Errors
///
/// A document that is not YAML, or not an object with `kind` and `metadata.name`.
pub fn manifest_objects(
    manifest: &str,
    release: &str,
    namespace: &str,
) -> Result<Vec<Value>, ManifestError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(manifest)
        // The parser's excerpt could quote values: say only where it failed.
        .map_err(|e| ManifestError(e.to_string().lines().next().unwrap_or_default().to_owned()))?;
    documents
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|mut document| {
            let Some(object) = document.as_object_mut() else {
                return Err(ManifestError("a document is not an object".into()));
            };
            if kind_and_name(object).is_none() {
                return Err(ManifestError(
                    "an object has no kind or no metadata.name".into(),
                ));
            }
            let metadata = object
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| ManifestError("an object has no metadata".into()))?;
            entry_map(metadata, "labels").insert(
                "app.kubernetes.io/managed-by".into(),
                Value::String("Helm".into()),
            );
            let annotations = entry_map(metadata, "annotations");
            annotations.insert("meta.helm.sh/release-name".into(), release.into());
            annotations.insert("meta.helm.sh/release-namespace".into(), namespace.into());
            Ok(document)
        })
        .collect()
}

fn entry_map<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = object
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

fn kind_and_name(object: &Map<String, Value>) -> Option<(&str, &str)> {
    let kind = object.get("kind")?.as_str()?;
    let name = object.get("metadata")?.get("name")?.as_str()?;
    Some((kind, name))
}

/// The API group, kind, namespace and name that identify an object the server returned.
pub fn identity(object: &Value) -> Option<(String, String, String, String)> {
    let group = object
        .get("apiVersion")?
        .as_str()?
        .rsplit_once('/')
        .map_or("", |(group, _)| group)
        .to_owned();
    let (kind, name) = kind_and_name(object.as_object()?)?;
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Some((group, kind.to_owned(), namespace, name.to_owned()))
}

/// The objects among `states` whose live state differs from the desired one, leaving out the
/// fields the server keeps and those `ignore` names for them. A deleted object is always
/// drifted: a rule hides fields, never a deletion.
pub fn detect(states: &[ObjectState], ignore: &[IgnoreRule]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (index, state) in states.iter().enumerate() {
        let Some((_, kind, namespace, name)) = identity(&state.desired) else {
            continue;
        };
        let namespace = (!namespace.is_empty()).then_some(namespace);
        let mut object = DriftedObject {
            kind,
            name,
            namespace,
            deleted: false,
            fields: Vec::new(),
        };
        match &state.live {
            None => object.deleted = true,
            Some(live) => {
                let skipped = ignored_paths(ignore, &object.kind, &object.name);
                differences(
                    &state.desired,
                    live,
                    &mut String::new(),
                    &skipped,
                    &mut object.fields,
                );
            }
        }
        if object.deleted || !object.fields.is_empty() {
            findings.push(Finding { index, object });
        }
    }
    findings
}

/// The paths never compared for the object of `kind` named `name`: the server's and the
/// ignore rules' for it.
fn ignored_paths<'a>(ignore: &'a [IgnoreRule], kind: &str, name: &str) -> Vec<&'a str> {
    SERVER_FIELDS
        .into_iter()
        .chain(
            ignore
                .iter()
                .filter(|rule| rule.applies_to(kind, name))
                .flat_map(|rule| rule.paths.iter().map(String::as_str)),
        )
        .collect()
}

/// Whether `path` is `pointer` or lies below it.
fn covered(path: &str, pointer: &str) -> bool {
    path.strip_prefix(pointer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Appends to `out` the JSON pointers (below `path`) where `desired` and `live` differ: a
/// key on one side only, a value of another type or value, a list of another length.
fn differences(
    desired: &Value,
    live: &Value,
    path: &mut String,
    skipped: &[&str],
    out: &mut Vec<String>,
) {
    if skipped.iter().any(|p| covered(path, p)) {
        return;
    }
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            let keys: std::collections::BTreeSet<&String> = d.keys().chain(l.keys()).collect();
            for key in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                match (d.get(key), l.get(key)) {
                    (Some(d), Some(l)) => differences(d, l, path, skipped, out),
                    _ if skipped.iter().any(|p| covered(path, p)) => {}
                    _ => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            for (i, (d, l)) in d.iter().zip(l).enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                differences(d, l, path, skipped, out);
                path.truncate(len);
            }
        }
        (d, l) if d == l => {}
        _ => out.push(if path.is_empty() {
            "/".into()
        } else {
            path.clone()
        }),
    }
}

/// What a correction applies for `finding`: the manifest's object without the fields the
/// ignore rules name for it, so that applying it leaves them as they are.
pub fn correction(states: &[ObjectState], finding: &Finding, ignore: &[IgnoreRule]) -> Value {
    let mut object = states[finding.index].applied.clone();
    for pointer in ignore
        .iter()
        .filter(|rule| rule.applies_to(&finding.object.kind, &finding.object.name))
        .flat_map(|rule| &rule.paths)
    {
        remove(&mut object, pointer);
    }
    object
}

/// Removes the value at `pointer` (RFC 6901) from `value`, if there is one.
fn remove(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(list)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < list.len()
            {
                list.remove(i);
            }
        }
        _ => {}
    }
}

/// The report of a check of `checked` objects that found `findings` (each list cut to
/// [`MAX_DRIFT_ITEMS`]); `corrected` when they were applied again.
pub fn report(checked: usize, findings: &[Finding], corrected: bool) -> DriftReport {
    DriftReport {
        checked: u32::try_from(checked).unwrap_or(u32::MAX),
        objects: findings
            .iter()
            .take(MAX_DRIFT_ITEMS)
            .map(|f| {
                let mut object = f.object.clone();
                object.fields.truncate(MAX_DRIFT_ITEMS);
                object
            })
            .collect(),
        drifted: u32::try_from(findings.len()).unwrap_or(u32::MAX),
        corrected,
        failed: false,
    }
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::IgnoreTarget;
    use serde_json::json;

    use super::*;

    fn deployment(replicas: u32, generation: u32) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "team", "generation": generation,
                         "resourceVersion": "7", "labels": {"app": "web", "extra": "x"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 5}
        })
    }

    fn config_map(name: &str, level: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "team"}, "data": {"level": level}})
    }

    fn state(desired: Value, live: Option<Value>) -> ObjectState {
        ObjectState {
            applied: desired.clone(),
            desired,
            live,
        }
    }

    fn rule(paths: &[&str], kind: Option<&str>, name: Option<&str>) -> IgnoreRule {
        IgnoreRule {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            target: (kind.is_some() || name.is_some()).then(|| IgnoreTarget {
                kind: kind.map(str::to_owned),
                name: name.map(str::to_owned),
            }),
        }
    }

    #[test]
    fn a_scaled_deployment_and_a_deleted_config_map_drift_and_server_fields_do_not() {
        let states = [
            // The dry run bumps the generation and sets the manifest's replicas back.
            state(deployment(2, 4), Some(deployment(5, 3))),
            state(config_map("web-config", "1"), None),
            state(
                config_map("web-tuning", "1"),
                Some(config_map("web-tuning", "1")),
            ),
        ];
        let found = detect(&states, &[]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].index, 0);
        assert_eq!(found[0].object.fields, ["/spec/replicas"]);
        assert_eq!(found[0].object.namespace.as_deref(), Some("team"));
        assert!(found[1].object.deleted && found[1].index == 1);
        let report = report(states.len(), &found, false);
        assert_eq!(report.checked, 3);
        assert_eq!(report.drifted, 2);
        assert_eq!(
            report.describe(),
            "Deployment web: /spec/replicas; ConfigMap web-config deleted"
        );
    }

    #[test]
    fn ignore_rules_hide_fields_of_their_targets_only_and_never_a_deletion() {
        let states = [
            state(deployment(2, 1), Some(deployment(5, 1))),
            state(
                config_map("web-tuning", "1"),
                Some(config_map("web-tuning", "9")),
            ),
            state(
                config_map("web-other", "1"),
                Some(config_map("web-other", "9")),
            ),
            state(config_map("web-gone", "1"), None),
        ];
        let ignore = [
            rule(&["/spec/replicas"], Some("Deployment"), None),
            rule(&["/data"], Some("ConfigMap"), Some("web-tuning")),
            rule(&["/data"], Some("ConfigMap"), Some("web-gone")),
        ];
        let found = detect(&states, &ignore);
        let names: Vec<&str> = found.iter().map(|f| f.object.name.as_str()).collect();
        assert_eq!(names, ["web-other", "web-gone"]);
        assert_eq!(found[0].object.fields, ["/data/level"]);
        // A rule for another kind hides nothing.
        let found = detect(
            &states[..1],
            &[rule(&["/spec/replicas"], Some("StatefulSet"), None)],
        );
        assert_eq!(found.len(), 1);
        // A pointer covers what lies below it, not a sibling with a longer name.
        let found = detect(&states[..1], &[rule(&["/spec/replica"], None, None)]);
        assert_eq!(found[0].object.fields, ["/spec/replicas"]);
    }

    #[test]
    fn keys_on_one_side_lists_of_another_length_and_escaped_keys_are_named() {
        let desired = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s",
            "annotations": {"a/b": "1", "c~d": "2"}}, "spec": {"ports": [{"port": 80}]}});
        let live = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s",
            "annotations": {"a/b": "9"}}, "spec": {"ports": [{"port": 80}, {"port": 81}]}});
        let found = detect(&[state(desired, Some(live))], &[]);
        assert_eq!(
            found[0].object.fields,
            [
                "/metadata/annotations/a~1b",
                "/metadata/annotations/c~0d",
                "/spec/ports"
            ]
        );
        assert_eq!(found[0].object.namespace, None, "cluster-scoped or unset");
    }

    #[test]
    fn a_correction_applies_the_manifest_object_without_its_ignored_fields() {
        let mut applied = deployment(2, 1);
        applied["metadata"]["annotations"] = json!({"keep": "1", "x/y": "2"});
        let states = [ObjectState {
            applied,
            desired: deployment(2, 1),
            live: Some(deployment(5, 1)),
        }];
        let ignore = [
            rule(
                &["/spec/replicas", "/metadata/annotations/x~1y"],
                Some("Deployment"),
                Some("web"),
            ),
            rule(&["/spec/template"], Some("ConfigMap"), None),
        ];
        let finding = Finding {
            index: 0,
            object: DriftedObject {
                kind: "Deployment".into(),
                name: "web".into(),
                namespace: None,
                deleted: false,
                fields: vec![],
            },
        };
        let object = correction(&states, &finding, &ignore);
        assert_eq!(object.pointer("/spec/replicas"), None);
        assert!(
            object.pointer("/spec/template").is_some(),
            "the rule is for ConfigMaps"
        );
        assert_eq!(object["metadata"]["annotations"], json!({"keep": "1"}));
    }

    #[test]
    fn manifests_become_objects_with_helms_ownership_metadata() {
        let manifest = "---\n# Source: c/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: z}\ndata: {k: v}\n---\n\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: b\n";
        let objects = manifest_objects(manifest, "rel", "team").unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(
            objects[0]["metadata"]["labels"],
            json!({"x": "z", "app.kubernetes.io/managed-by": "Helm"})
        );
        assert_eq!(
            objects[1]["metadata"]["annotations"],
            json!({"meta.helm.sh/release-name": "rel", "meta.helm.sh/release-namespace": "team"})
        );
        assert!(manifest_objects("", "rel", "team").unwrap().is_empty());
        for bad in ["- a\n- b\n", "kind: ConfigMap\nmetadata: {}\n", "a: [\n"] {
            assert!(manifest_objects(bad, "rel", "team").is_err(), "{bad}");
        }
        assert_eq!(
            identity(&objects[1]),
            Some((
                "apps".into(),
                "Deployment".into(),
                String::new(),
                "b".into()
            ))
        );
    }

    #[test]
    fn reports_are_cut_to_their_limit_and_say_how_many_more() {
        let findings: Vec<Finding> = (0..MAX_DRIFT_ITEMS + 3)
            .map(|i| Finding {
                index: i,
                object: DriftedObject {
                    kind: "ConfigMap".into(),
                    name: format!("c{i}"),
                    namespace: None,
                    deleted: false,
                    fields: (0..MAX_DRIFT_ITEMS + 1)
                        .map(|f| format!("/data/k{f}"))
                        .collect(),
                },
            })
            .collect();
        let report = report(30, &findings, true);
        assert_eq!(report.objects.len(), MAX_DRIFT_ITEMS);
        assert!(
            report
                .objects
                .iter()
                .all(|o| o.fields.len() == MAX_DRIFT_ITEMS)
        );
        assert_eq!(report.drifted as usize, MAX_DRIFT_ITEMS + 3);
        assert!(report.describe().ends_with("; 3 more"));
    }
}
