//! Least privilege for real: the producer (watcher, writer, leader election) and the workers run
//! with ServiceAccount tokens bound only to the RBAC of `deploy/rbac/`, and the protocols work
//! (claim → Ready → delete, a managed namespace deleted by the worker's kubectl); a call outside
//! the grant is refused with 403.
//!
//! The manifests are applied as they are written, with their names made the case's own so that
//! it never touches a real `helmq-system` and can run beside other cases: the namespace
//! `helmq-system` becomes `<case namespace>-system`, cluster-wide names get that as a suffix.

use std::path::{Path, PathBuf};

use helmq_schemas::{Component, Phase};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use crate::support::{CLAIM_WITHIN, Options, Stack, claimed, gate, spec};
use helmq_tests::workspace_root;

const ROLES: [&str; 2] = ["producer", "worker"];

/// The objects of `deploy/rbac/<role>.yaml`, renamed for this case (see the module docs).
pub(crate) fn manifests(role: &str, suffix: &str) -> Vec<Value> {
    let path = workspace_root().join(format!("deploy/rbac/{role}.yaml"));
    let text = std::fs::read_to_string(&path).expect("read the RBAC manifest");
    let mut docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("parse RBAC");
    let system = format!("{suffix}-system");
    let rename = |v: &mut Value| {
        if v.get("namespace").and_then(Value::as_str) == Some("helmq-system") {
            v["namespace"] = json!(system);
        }
    };
    for doc in &mut docs {
        rename(&mut doc["metadata"]);
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if kind.starts_with("Cluster") {
            let name = format!("{}-{suffix}", doc["metadata"]["name"].as_str().unwrap());
            doc["metadata"]["name"] = json!(name);
        }
        if doc["roleRef"]["kind"] == "ClusterRole" {
            let name = format!("{}-{suffix}", doc["roleRef"]["name"].as_str().unwrap());
            doc["roleRef"]["name"] = json!(name);
        }
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            subjects.iter_mut().for_each(rename);
        }
    }
    docs
}

async fn create<K>(api: Api<K>, doc: Value)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(doc).expect("a manifest of its kind");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create an RBAC object");
}

/// Creates the objects (ServiceAccounts and RBAC) with the test's own (admin) credentials.
pub(crate) async fn apply(client: &kube::Client, docs: Vec<Value>) {
    for doc in docs {
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let c = client.clone();
        match doc["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => create::<ServiceAccount>(Api::namespaced(c, &ns), doc).await,
            "Role" => create::<Role>(Api::namespaced(c, &ns), doc).await,
            "RoleBinding" => create::<RoleBinding>(Api::namespaced(c, &ns), doc).await,
            "ClusterRole" => create::<ClusterRole>(Api::all(c), doc).await,
            "ClusterRoleBinding" => create::<ClusterRoleBinding>(Api::all(c), doc).await,
            other => panic!("unexpected kind {other} among RBAC manifests"),
        }
    }
}

/// The onboarding of `deploy/examples/tenant.yaml` for `namespace`: its `helmq-deployer`
/// account bound to `admin` there.
pub(crate) fn tenant(namespace: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "helmq-deployer", "namespace": namespace}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "helmq-deployer-admin", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "helmq-deployer", "namespace": namespace}]}),
    ]
}

/// Creates namespace `name` with the test's own (admin) credentials.
pub(crate) async fn create_namespace(client: &kube::Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace"),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Sets up the multi-tenant profile for a case whose namespace is `namespace` and returns the
/// workers' kubeconfig (written into `dir`): the workers' account and rights of
/// `deploy/rbac/worker-tenants.yaml` (impersonating `helmq-deployer` accounts, nothing else) in
/// `<namespace>-system`, and `namespace` onboarded as `deploy/examples/tenant.yaml` does. The
/// cases release into namespaces that helmq creates and deletes (`manageNamespace`), which the
/// example's tenant may not: this one is also granted what such a tenant needs, as
/// `deploy/examples/tenant.yaml` says to grant it (creating and deleting namespaces, and `admin`
/// in every namespace, so in the ones it creates).
pub(crate) async fn tenants_profile(admin: &kube::Client, namespace: &str, dir: &Path) -> PathBuf {
    let system = format!("{namespace}-system");
    create_namespace(admin, &system).await;
    apply(admin, manifests("worker-tenants", namespace)).await;
    let mut onboarding = tenant(namespace);
    let account =
        json!([{"kind": "ServiceAccount", "name": "helmq-deployer", "namespace": namespace}]);
    let namespaces = format!("helmq-e2e-namespaces-{namespace}");
    onboarding.extend([
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": namespaces},
               "rules": [{"apiGroups": [""], "resources": ["namespaces"],
                          "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": namespaces},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": namespaces},
               "subjects": account}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": format!("helmq-e2e-admin-{namespace}")},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
               "subjects": account}),
    ]);
    apply(admin, onboarding).await;
    token_kubeconfig(
        &token(admin, &system, "helmq-worker").await,
        None,
        &dir.join("worker.kubeconfig"),
    )
}

/// A kubeconfig for the current context's cluster that authenticates with `token` only, acting
/// as user `act_as` when given (impersonation, as `kubectl --as` and `helm --kube-as-user` do).
pub(crate) fn token_kubeconfig(token: &str, act_as: Option<&str>, path: &Path) -> PathBuf {
    let mut config = Kubeconfig::read().expect("the test's kubeconfig");
    let context_name = config.current_context.clone().expect("a current context");
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .expect("the current context");
    config.clusters.retain(|c| c.name == context.cluster);
    let cluster = context.cluster.clone();
    let written = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": config.clusters,
        "users": [{"name": "sa", "user": {"token": token, "as": act_as}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster, "user": "sa"}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&written).unwrap()).expect("write kubeconfig");
    path.to_owned()
}

/// A one-hour token of a ServiceAccount, from the TokenRequest API.
pub(crate) async fn token(client: &kube::Client, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token
}

pub(crate) async fn client_for(kubeconfig: &Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).expect("read kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// The user name the API server sees for a kubeconfig (SelfSubjectReview).
pub(crate) async fn whoami(client: &kube::Client) -> String {
    Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview")
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default()
}

/// Asserts that a call was refused by RBAC.
pub(crate) fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn service_account_tokens_bound_to_deploy_rbac_run_the_protocols_and_nothing_more() {
    gate!();
    let admin = kube::Client::try_default().await.expect("a cluster");
    let suffix = format!("e2e-rbac-{}", std::process::id());
    let system = format!("{suffix}-system");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": system}})).unwrap(),
        )
        .await
        .expect("create the system namespace");
    for role in ROLES {
        apply(&admin, manifests(role, &suffix)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let producer_kubeconfig = token_kubeconfig(
        &token(&admin, &system, "helmq-producer").await,
        None,
        &dir.path().join("producer.kubeconfig"),
    );
    let worker_kubeconfig = token_kubeconfig(
        &token(&admin, &system, "helmq-worker").await,
        None,
        &dir.path().join("worker.kubeconfig"),
    );

    for (kubeconfig, account) in [
        (&producer_kubeconfig, "helmq-producer"),
        (&worker_kubeconfig, "helmq-worker"),
    ] {
        assert_eq!(
            whoami(&client_for(kubeconfig).await).await,
            format!("system:serviceaccount:{system}:{account}")
        );
    }

    // The producer elects itself leader on a Lease in its own namespace, which its Role grants.
    let lease_name = format!("helmq-producer-{}", std::process::id());
    let stack = Stack::start_with(Options {
        producer_args: [
            "--leader-elect",
            "--lease-namespace",
            &system,
            "--lease-name",
            &lease_name,
        ]
        .map(str::to_owned)
        .to_vec(),
        producer_kubeconfig: Some(producer_kubeconfig.clone()),
        worker_kubeconfig: Some(worker_kubeconfig.clone()),
        charts: vec!["hello"],
        ..Options::new("rbac")
    })
    .await;

    // The protocols: claim → Ready → delete, into a namespace the worker creates and deletes.
    let release_ns = format!("{}-app", stack.cluster.namespace());
    let config = stack.charts.chart_config(
        "hello",
        "0.1.0",
        "least",
        &release_ns,
        true,
        json!({"greeting": "least privilege"}),
    );
    stack
        .cluster
        .create_spec("least", spec("least", config))
        .await;
    stack
        .cluster
        .wait_for("least", CLAIM_WITHIN, "claimed", claimed)
        .await;
    let ready = stack.cluster.wait_phase("least", Phase::Ready, 1).await;
    // The writer, on the producer's token, records its Events.
    stack.cluster.wait_event("least", "Ready").await;
    let reasons: Vec<String> = stack
        .cluster
        .events("least")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        reasons,
        ["Claimed", "Deploying", "Ready"],
        "Events recorded on the producer's token"
    );
    assert_eq!(
        ready.status.unwrap().handler_status.unwrap().revision,
        Some(1)
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), &system)
        .get(&lease_name)
        .await
        .expect("the leader Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with("e2e-producer-1"),
        "lease held by {holder:?}"
    );
    stack.cluster.delete_and_wait_gone("least").await;
    assert_eq!(
        stack.cluster.release_status("least", &release_ns).await,
        None
    );
    stack.cluster.wait_namespace_gone(&release_ns).await;

    // Outside the grant: refused.
    let producer = client_for(&producer_kubeconfig).await;
    forbidden(
        "producer lists Secrets",
        Api::<Secret>::namespaced(producer.clone(), stack.cluster.namespace())
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "producer creates a Component",
        Api::<Component>::namespaced(producer.clone(), stack.cluster.namespace())
            .create(&PostParams::default(), &{
                let mut c = Component::new("intruder", spec("intruder", json!({})));
                c.metadata.namespace = Some(stack.cluster.namespace().to_owned());
                c
            })
            .await,
    );
    forbidden(
        "producer reads a Lease outside its namespace",
        Api::<Lease>::namespaced(producer, stack.cluster.namespace())
            .get_opt("anything")
            .await,
    );
    // The workers' ClusterRole covers every resource (any chart's objects), but no
    // non-resource URL: the token is the worker's own, not an administrator's.
    let worker = client_for(&worker_kubeconfig).await;
    forbidden(
        "worker reads the API server's /metrics",
        worker
            .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
            .await,
    );
    stack.stop().await;

    // Clean up what this case created outside its namespace.
    for role in ROLES {
        let name = format!("helmq-{role}-{suffix}");
        let _ = Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(&name, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(admin.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }
    let _ = namespaces.delete(&system, &DeleteParams::default()).await;
}
