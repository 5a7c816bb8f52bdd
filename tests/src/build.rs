//! Test data shared by the crates' tests: `Component` objects as the API server would hold
//! them ([`component`]) and Helm configs as `spec.config` carries them ([`nginx_config`]).

use helmq_schemas::component::{Component, ComponentSpec, ComponentStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

/// A uid as Kubernetes writes one (an RFC 4122 version 4 UUID), the same for the same `label`:
/// tests name their objects' uids by a label and compare what comes back.
pub fn uid(label: &str) -> String {
    // FNV-1a, 64 bits: a stable spread of the label over the UUID's digits.
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        hash >> 32,
        (hash >> 16) & 0xffff,
        hash & 0xfff,
        (hash >> 52) & 0xfff,
        hash & 0xffff_ffff_ffff
    )
}

/// A Component named `name` in namespace `default` for the `helm` handler, without config,
/// uid, generation or status: what a user creates (see [`ComponentBuilder`] for the rest).
pub fn component(name: &str) -> ComponentBuilder {
    let mut component = Component::new(
        name,
        ComponentSpec {
            name: name.into(),
            handler: "helm".into(),
            config: None,
            deployment_timeout: None,
            termination_timeout: None,
        },
    );
    component.metadata.namespace = Some("default".into());
    ComponentBuilder(component)
}

/// A Component being put together; [`ComponentBuilder::build`] hands it out.
#[derive(Debug, Clone)]
pub struct ComponentBuilder(Component);

impl ComponentBuilder {
    /// In `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.metadata.namespace = Some(namespace.into());
        self
    }

    /// For `handler` (`spec.handler`).
    pub fn handler(mut self, handler: &str) -> Self {
        self.0.spec.handler = handler.into();
        self
    }

    /// With `spec.config` (`None`: none).
    pub fn config(mut self, config: impl Into<Option<Value>>) -> Self {
        self.0.spec.config = config.into();
        self
    }

    /// With `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.into());
        self
    }

    /// At `metadata.generation`.
    pub fn generation(mut self, generation: i64) -> Self {
        self.0.metadata.generation = Some(generation);
        self
    }

    /// As read at `metadata.resourceVersion`.
    pub fn resource_version(mut self, resource_version: &str) -> Self {
        self.0.metadata.resource_version = Some(resource_version.into());
        self
    }

    /// With these finalizers (none: no list, as the API server shows it).
    pub fn finalizers(mut self, finalizers: &[&str]) -> Self {
        self.0.metadata.finalizers =
            (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| (*f).to_owned()).collect());
        self
    }

    /// Being deleted since `at` (`metadata.deletionTimestamp`).
    pub fn deleting_since(mut self, at: Timestamp) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(at));
        self
    }

    /// With `status`.
    pub fn status(mut self, status: ComponentStatus) -> Self {
        self.0.status = Some(status);
        self
    }

    /// The Component.
    pub fn build(self) -> Component {
        self.0
    }
}

/// A valid `spec.config` in the source form: release `web` in namespace `apps`, Bitnami's nginx
/// chart 18.2.4 from its http repository, with `values`.
pub fn nginx_config(values: Value) -> Value {
    serde_json::json!({
        "releaseName": "web",
        "releaseNamespace": "apps",
        "source": {"type": "http",
            "repository": {"url": "https://repo.broadcom.com/bitnami-files", "name": "bitnami"},
            "chart": {"name": "nginx", "version": "18.2.4"}},
        "values": values,
    })
}
