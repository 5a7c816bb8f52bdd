//! The work the bench generates: apply jobs for releases `b-<i>` with RFC 4122 UUIDs as
//! Component uids, and the matching `Component` objects for the in-memory API server.

use helmq_schemas::component::Component;
use helmq_schemas::config::{ChartRef, Repository};
use helmq_schemas::event::{ComponentRef, JobAction, JobEvent};
use helmq_schemas::{ChartSource, HelmConfig};

/// Namespace of the bench's Components.
pub const NAMESPACE: &str = "bench";
/// Namespace of the bench's releases.
pub const RELEASE_NAMESPACE: &str = "apps";
/// The chart repository the jobs name (never contacted: drivers are in memory or a stand-in).
pub const REPOSITORY: &str = "https://charts.example.com/stable";

/// A version-4 RFC 4122 UUID that is unique per (`run`, `index`): `run` tells apart the
/// batches published to one server, so no two jobs share a dedupe id.
pub fn uuid(run: u32, index: usize) -> String {
    format!("{run:08x}-0000-4000-8000-{index:012x}")
}

/// Name of the Component and release number `index`.
pub fn name(index: usize) -> String {
    format!("b-{index}")
}

/// The number in a name made by [`name`].
pub fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix("b-")?.parse().ok()
}

/// The Helm config of release `name`: a pinned chart from [`REPOSITORY`], a few values.
pub fn config(name: &str) -> HelmConfig {
    let mut values = serde_json::Map::new();
    values.insert("replicaCount".into(), 1.into());
    values.insert("image".into(), serde_json::json!({"tag": "1.27.3"}));
    HelmConfig {
        release_name: name.to_owned(),
        release_namespace: RELEASE_NAMESPACE.to_owned(),
        manage_namespace: false,
        source: ChartSource::Http {
            repository: Repository {
                url: REPOSITORY.to_owned(),
                name: "example".to_owned(),
            },
            chart: ChartRef {
                name: "nginx".to_owned(),
                version: "1.2.3".to_owned(),
            },
        },
        values,
        values_from: Vec::new(),
        service_account_name: None,
        adopt: false,
        remediation: Default::default(),
        test: Default::default(),
        drift: Default::default(),
    }
}

/// The apply job of release `index` for a Component with `uid` at generation 1.
pub fn apply(index: usize, uid: String) -> JobEvent {
    apply_in(NAMESPACE, index, uid)
}

/// The namespace of tenant number `tenant` (the fairness phases' Components).
pub fn tenant(tenant: usize) -> String {
    format!("t-{tenant}")
}

/// [`apply`] for a Component in `namespace` (its tenant).
pub fn apply_in(namespace: &str, index: usize, uid: String) -> JobEvent {
    let name = name(index);
    JobEvent::new(
        JobAction::Apply,
        ComponentRef {
            namespace: namespace.to_owned(),
            name: name.clone(),
            uid: Some(uid),
            generation: 1,
        },
        config(&name),
        300,
        jiff::Timestamp::now(),
    )
}

/// The Component of release `index` as a user creates it (the in-memory API server assigns
/// its uid and generation).
pub fn component(index: usize) -> Component {
    component_in(NAMESPACE, index)
}

/// [`component`] in `namespace` (its tenant).
pub fn component_in(namespace: &str, index: usize) -> Component {
    let name = name(index);
    let config = serde_json::to_value(config(&name)).unwrap_or_default();
    helmq_tests::build::component(&name)
        .namespace(namespace)
        .config(config)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_unique_per_run_and_index() {
        let id = uuid(3, 17);
        assert_eq!(id, "00000003-0000-4000-8000-000000000011");
        assert_eq!(id.len(), 36);
        assert_ne!(uuid(3, 17), uuid(4, 17));
        assert_eq!(index_of(&name(42)), Some(42));
        assert_eq!(index_of("web"), None);
        let job = apply(7, uuid(1, 7));
        let decoded = JobEvent::decode(&job.encode());
        assert!(
            decoded.is_ok(),
            "a generated job must pass the worker's checks: {decoded:?}"
        );
    }
}
