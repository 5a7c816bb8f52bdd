//! Every example Component in `deploy/examples/` is a valid Component for the CRD and its
//! Helm config parses.

use helmq_schemas::{Component, HelmConfig};

#[test]
fn every_example_component_parses_and_has_a_valid_helm_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Examples of built-in objects only (tenant.yaml: a tenant's namespace and RBAC) are
        // validated against the Kubernetes schemas by scripts/validate-deploy.sh instead.
        if !text.lines().any(|line| line == "kind: Component") {
            continue;
        }
        // A file may hold the objects its Component reads (valuesFrom) before it.
        let document = text
            .split("\n---\n")
            .find(|doc| doc.lines().any(|line| line == "kind: Component"))
            .unwrap();
        let component: Component =
            serde_saphyr::from_str(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ns = component.metadata.namespace.clone().unwrap_or_default();
        let name = component.metadata.name.clone().unwrap_or_default();
        assert_eq!(component.spec.handler, "helm", "{}", path.display());
        assert_eq!(component.spec.name, name, "{}", path.display());
        let config = HelmConfig::parse(component.spec.config.as_ref(), &ns, &name)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config.validate().unwrap();
        component.spec.deployment_timeout().unwrap();
        component.spec.termination_timeout().unwrap();
        seen += 1;
    }
    assert!(seen >= 4, "expected the example Components, found {seen}");
}
