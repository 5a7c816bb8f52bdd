//! The generated CRD is a structural schema as apiextensions.k8s.io/v1 requires, with the
//! status subresource and a free-form `spec.config`.

use helmq_schemas::component::crd;
use serde_json::Value;

/// Collects every violation of the structural-schema rules of apiextensions v1 below `node`.
fn structural_violations(path: &str, node: &Value, in_logic: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    for banned in ["$ref", "$defs", "definitions", "$schema"] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: {banned} is not allowed"));
        }
    }
    if in_logic {
        // Inside anyOf/oneOf/allOf/not only value validations may appear.
        for banned in [
            "type",
            "description",
            "default",
            "nullable",
            "additionalProperties",
        ] {
            if obj.contains_key(banned) {
                out.push(format!(
                    "{path}: {banned} is not allowed inside a logical junctor"
                ));
            }
        }
    } else if !obj.contains_key("type") && !preserve && !int_or_string {
        out.push(format!("{path}: type is required"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties are exclusive"
        ));
    }
    if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
        out.push(format!("{path}: arrays need items"));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (key, child) in props {
            structural_violations(&format!("{path}.{key}"), child, in_logic, out);
        }
    }
    match obj.get("items") {
        Some(items @ Value::Object(_)) => {
            structural_violations(&format!("{path}[]"), items, in_logic, out)
        }
        Some(_) => out.push(format!("{path}: items must be one schema")),
        None => {}
    }
    if let Some(extra @ Value::Object(_)) = obj.get("additionalProperties") {
        structural_violations(&format!("{path}{{*}}"), extra, in_logic, out);
    }
    for junctor in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = obj.get(junctor) {
            for (i, branch) in branches.iter().enumerate() {
                structural_violations(&format!("{path}.{junctor}[{i}]"), branch, true, out);
            }
        }
    }
    if let Some(not) = obj.get("not") {
        structural_violations(&format!("{path}.not"), not, true, out);
    }
}

#[test]
fn the_crd_is_a_structural_schema() {
    let crd = serde_json::to_value(crd()).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    let root = &versions[0]["schema"]["openAPIV3Schema"];
    let mut violations = Vec::new();
    structural_violations("openAPIV3Schema", root, false, &mut violations);
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(root["type"], "object");
}

#[test]
fn the_crd_matches_the_original_resource() {
    let crd = serde_json::to_value(crd()).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        "components.deployment-orchestrator.io"
    );
    assert_eq!(crd["spec"]["group"], "deployment-orchestrator.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "Component");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));

    let columns = version["additionalPrinterColumns"].as_array().unwrap();
    let shown = |wide: bool| -> Vec<&str> {
        columns
            .iter()
            .filter(|c| c.get("priority").is_some_and(|p| p != 0) == wide)
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(shown(false), ["Phase", "Ready", "Handler", "Age"]);
    // `kubectl get components -o wide` adds these.
    assert_eq!(
        shown(true),
        [
            "Release",
            "Revision",
            "Chart-Version",
            "Message",
            "Suspended"
        ]
    );

    let props = &version["schema"]["openAPIV3Schema"]["properties"];
    // Every column's simple path names a field of the schema, with the column's type.
    for column in columns {
        let path = column["jsonPath"].as_str().unwrap();
        if path.contains('[') || path.starts_with(".metadata") {
            continue;
        }
        let mut node = &version["schema"]["openAPIV3Schema"];
        for field in path.trim_start_matches('.').split('.') {
            node = &node["properties"][field];
            assert!(
                !node.is_null(),
                "column {column}: no field {field} in the schema"
            );
        }
        let want = match column["type"].as_str().unwrap() {
            "date" => "string",
            other => other,
        };
        assert_eq!(node["type"], want, "column {column}");
    }
    let spec = &props["spec"]["properties"];
    assert_eq!(spec["config"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(
        props["spec"]["required"],
        serde_json::json!(["handler", "name"])
    );
    let status = &props["status"]["properties"];
    assert_eq!(
        status["phase"]["enum"],
        serde_json::json!([
            "Pending",
            "Claimed",
            "Deploying",
            "Ready",
            "Failed",
            "Terminating",
            "TerminationFailed"
        ])
    );
    for field in [
        "message",
        "claimedBy",
        "claimedAt",
        "observedGeneration",
        "conditions",
        "handlerStatus",
    ] {
        assert!(status.get(field).is_some(), "status.{field} missing");
    }
    let record = &status["handlerStatus"]["properties"];
    for field in [
        "releaseName",
        "releaseNamespace",
        "revision",
        "chartVersion",
        "lastDeployTime",
        "attempts",
    ] {
        assert!(record.get(field).is_some(), "handlerStatus.{field} missing");
    }
}

#[test]
fn the_checked_in_artifacts_are_fresh() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for artifact in helmq_schemas::generate::artifacts().unwrap() {
        let on_disk = std::fs::read_to_string(root.join(&artifact.path)).unwrap_or_default();
        assert!(
            on_disk == artifact.contents,
            "{} is stale: run `just generate` and commit it",
            artifact.path.display()
        );
    }
}

#[test]
fn the_checker_flags_non_structural_schemas() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "reffed": {"$ref": "#/definitions/x", "type": "object"},
            "list": {"type": "array"},
            "either": {"type": "object", "anyOf": [{"type": "string"}]},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "free": {"x-kubernetes-preserve-unknown-fields": true}
        }
    });
    let mut violations = Vec::new();
    structural_violations("root", &bad, false, &mut violations);
    assert_eq!(
        violations,
        [
            "root.both: properties and additionalProperties are exclusive",
            "root.either.anyOf[0]: type is not allowed inside a logical junctor",
            "root.list: arrays need items",
            "root.reffed: $ref is not allowed",
            "root.untyped: type is required",
        ]
    );
}
