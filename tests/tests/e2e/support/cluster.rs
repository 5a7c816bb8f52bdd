//! [`Cluster`]: a view of the API server and of helm as the case's admin sees them: the case's
//! namespace, its Components (create, change, wait for, delete), Events, namespaces and Helm
//! releases.

use std::time::{Duration, Instant};

use helmq_schemas::{Component, ComponentSpec, Phase};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::process::Command;

use super::{GONE_WITHIN, READY_WITHIN, binary, spec};

/// The cluster with the test's own (admin) credentials, and the namespace of the case.
#[derive(Clone)]
pub(crate) struct Cluster {
    client: kube::Client,
    namespace: String,
    helm: String,
}

impl Cluster {
    /// Connects with `KUBECONFIG`, installs the Component CRD and creates the namespace
    /// `e2e-<tag>-<pid>-<nonce>`; `helm` is the real helm executable.
    pub(super) async fn connect(tag: &str, helm: String) -> Cluster {
        let client = kube::Client::try_default()
            .await
            .expect("a cluster from KUBECONFIG");
        install_crd(&client).await;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 0x10000)
            .unwrap_or_default();
        let namespace = format!("e2e-{tag}-{}-{nonce:04x}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": namespace, "labels": {"app.kubernetes.io/created-by": "helmq-e2e"}}
                }))
                .expect("namespace"),
            )
            .await
            .expect("create the test namespace");
        Cluster {
            client,
            namespace,
            helm,
        }
    }

    /// The case's namespace, where its Components live.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A client for the cluster, with the test's own (admin) credentials.
    pub(crate) fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The real helm executable (`HELM_BIN`, default `helm`).
    pub(crate) fn helm(&self) -> &str {
        &self.helm
    }

    /// The Components of the case's namespace.
    pub(crate) fn components(&self) -> Api<Component> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a Component with [`spec`]'s defaults.
    pub(crate) async fn create(&self, name: &str, config: Value) -> Component {
        self.create_spec(name, spec(name, config)).await
    }

    /// Creates a Component with this spec in the case's namespace.
    pub(crate) async fn create_spec(&self, name: &str, spec: ComponentSpec) -> Component {
        let mut component = Component::new(name, spec);
        component.metadata.namespace = Some(self.namespace.clone());
        self.components()
            .create(&PostParams::default(), &component)
            .await
            .unwrap_or_else(|e| panic!("create Component {name}: {e}"))
    }

    /// Replaces `spec.config` (a new generation).
    pub(crate) async fn patch_config(&self, name: &str, config: Value) -> Component {
        self.components()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"config": config}})),
            )
            .await
            .unwrap_or_else(|e| panic!("patch Component {name}: {e}"))
    }

    /// Polls until `check` accepts the Component (or its absence, given `None`).
    pub(crate) async fn wait_for(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(Option<&Component>) -> bool,
    ) -> Option<Component> {
        let deadline = Instant::now() + within;
        loop {
            let current = self
                .components()
                .get_opt(name)
                .await
                .unwrap_or_else(|e| panic!("get Component {name}: {e}"));
            if check(current.as_ref()) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not {what} within {within:?}; last seen: {:#?}",
                current.map(|c| c.status)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for `phase` with `observedGeneration == generation`.
    pub(crate) async fn wait_phase(&self, name: &str, wanted: Phase, generation: i64) -> Component {
        self.wait_for(
            name,
            READY_WITHIN,
            &format!("{wanted:?} at generation {generation}"),
            |c| {
                c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.phase == Some(wanted) && s.observed_generation == Some(generation)
                })
            },
        )
        .await
        .expect("present")
    }

    /// Deletes a Component and waits until it is gone (the workers uninstalled its release and
    /// the writer removed the finalizer).
    pub(crate) async fn delete_and_wait_gone(&self, name: &str) {
        self.components()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete Component {name}: {e}"));
        self.wait_for(name, GONE_WITHIN, "deleted", |c| c.is_none())
            .await;
    }

    /// Waits until a namespace no longer exists.
    pub(crate) async fn wait_namespace_gone(&self, namespace: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + GONE_WITHIN;
        while let Some(ns) = namespaces.get_opt(namespace).await.expect("get namespace") {
            assert!(
                Instant::now() < deadline,
                "namespace {namespace} still there after {GONE_WITHIN:?}: {:?}",
                ns.status
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes the case's namespace (not waiting for it to go), after taking the finalizers
    /// off the Components left in it. helmq is stopped by then: a finalizer nobody removes
    /// would keep the namespace `Terminating` for good, and the namespace controller would go
    /// on retrying it against the shared API server through every later case and benchmark.
    pub(super) async fn delete_namespace(&self) {
        // Metadata only: an unreadable Component has finalizers too.
        let components = self.components();
        if let Ok(left) = components.list_metadata(&ListParams::default()).await {
            let release = json!({"metadata": {"finalizers": null}});
            for name in left.items.into_iter().filter_map(|c| c.metadata.name) {
                let _ = components
                    .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&release))
                    .await;
            }
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }

    /// `helm <args> -o json`, parsed; `None` when helm fails (e.g. no such release).
    pub(crate) async fn helm_json(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new(&self.helm)
            .args(args)
            .args(["-o", "json"])
            .output()
            .await
            .expect("run helm");
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("helm printed JSON"))
    }

    /// The release's Helm status (`deployed`, `pending-upgrade`, ...), `None` without a release.
    pub(crate) async fn release_status(&self, release: &str, namespace: &str) -> Option<String> {
        self.helm_json(&["status", release, "-n", namespace])
            .await
            .and_then(|v| v["info"]["status"].as_str().map(str::to_owned))
    }

    /// `(reason, count, note)` of the Kubernetes Events regarding Component `name`, oldest
    /// first.
    pub(crate) async fn events(&self, name: &str) -> Vec<(String, i32, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events = api
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .expect("list events")
            .items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| {
                (
                    e.reason.unwrap_or_default(),
                    e.series.map_or(1, |s| s.count),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits (up to 10 s: the writer records an Event right after the status write) for an
    /// Event with `reason` on Component `name`; returns its note.
    pub(crate) async fn wait_event(&self, name: &str, reason: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(name).await;
            if let Some(event) = events.iter().find(|e| e.0 == reason) {
                return event.2.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no {reason} Event; recorded: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Installs the Component CRD (`helmqctl preflight --install-crd`) and waits until it is
/// established. Cases starting at once may race to create it: the loser sees it present.
async fn install_crd(client: &kube::Client) {
    let ctl = binary("helmqctl");
    let mut last = String::new();
    for _ in 0..3 {
        let out = Command::new(&ctl)
            .args(["preflight", "--install-crd"])
            .output()
            .await
            .expect("run helmqctl preflight");
        if out.status.success() {
            last.clear();
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(last.is_empty(), "helmqctl preflight --install-crd: {last}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = helmq_schemas::component::crd()
        .metadata
        .name
        .expect("CRD name");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get(&name).await.expect("read the CRD");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} not established");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
