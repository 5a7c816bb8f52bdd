//! The Helm chart of helmq (`deploy/chart/helmq`) installs on a real cluster with a real helm:
//! for each RBAC profile, `helm install --wait` succeeds, the setup Job (a pre-install hook)
//! completes, the producer and worker Deployments become Available, the workers carry the
//! allowlists of the values (and, in the `tenants` profile, the ServiceAccount they impersonate),
//! and the ServiceAccounts get what the profile grants and no more (SubjectAccessReviews for each
//! account); `helm upgrade` runs the setup hook again and rolls the workers out with the new
//! value; `helm uninstall` removes it all, cluster-wide RBAC included.
//!
//! In the `tenants` profile the case namespace is also onboarded as a tenant with the objects of
//! `deploy/examples/tenant.yaml`, and the worker's own token, impersonating the tenant's
//! ServiceAccount as helm and kubectl would, may write in that namespace only, while the token
//! alone, or impersonating another account, may write nothing.
//!
//! The CRD stays out (`crds.install=false`): every case installs it with `helmqctl preflight`,
//! and a CRD another case created cannot be adopted by a release. On the rig no container runs
//! (its pod simulator makes pods Ready), so the images need not exist.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::rbac::{apply, client_for, forbidden, token, token_kubeconfig, whoami};
use crate::support::{GONE_WITHIN, gate, run_ok};
use helmq_tests::wait::eventually;
use helmq_tests::workspace_root;

/// How long the Deployments may take to become Available after `helm install --wait`.
const AVAILABLE_WITHIN: Duration = Duration::from_secs(120);

/// The ServiceAccount the workers impersonate in the `tenants` profile, as in
/// `deploy/examples/tenant.yaml`.
const TENANT_ACCOUNT: &str = "helmq-deployer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Cluster,
    Namespaced,
    Tenants,
}

/// Whether the API server's authorizer lets ServiceAccount `namespace/account` do `verb` on
/// `resource` (`resource.group`, optionally `/subresource`, optionally `:name` of one object)
/// in `in_ns` (`""`: all namespaces), asked with a SubjectAccessReview.
async fn can_i(
    client: &kube::Client,
    account: &str,
    namespace: &str,
    verb: &str,
    resource: &str,
    in_ns: &str,
) -> bool {
    let (resource, name) = resource.split_once(':').unwrap_or((resource, ""));
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"),
                       "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                   "subresource": subresource, "name": name,
                                   "namespace": in_ns},
        }
    }))
    .expect("a SubjectAccessReview");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

async fn available(deployments: &Api<Deployment>, name: &str) -> Result<i32, String> {
    let d = deployments
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no Deployment {name}"))?;
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.unwrap_or_default();
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let ready = status.available_replicas.unwrap_or(0);
    if condition && ready == wanted {
        Ok(ready)
    } else {
        Err(format!(
            "{name}: Available={condition}, {ready}/{wanted} available"
        ))
    }
}

/// The ServiceAccount and RoleBinding of `deploy/examples/tenant.yaml`, moved from `team-a` to
/// `namespace` (which exists already: the Namespace object is left out).
fn tenant_manifests(namespace: &str) -> Vec<Value> {
    let path = workspace_root().join("deploy/examples/tenant.yaml");
    let text = std::fs::read_to_string(&path).expect("read the tenant example");
    let mut docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("parse the example");
    docs.retain(|doc| doc["kind"] != "Namespace");
    for doc in &mut docs {
        doc["metadata"]["namespace"] = json!(namespace);
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            subjects
                .iter_mut()
                .for_each(|s| s["namespace"] = json!(namespace));
        }
    }
    docs
}

/// Onboards `namespace` as a tenant (`deploy/examples/tenant.yaml`) and checks, with the token of
/// the worker's ServiceAccount `worker`, that impersonating the tenant's account writes in the
/// tenant's namespace and nowhere else, and that the token writes nothing on its own or as
/// another account of the tenant.
async fn deploys_only_as_the_tenant(client: &kube::Client, namespace: &str, worker: &str) {
    apply(client, tenant_manifests(namespace)).await;
    let worker_token = token(client, namespace, worker).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let as_user = |account: &str| format!("system:serviceaccount:{namespace}:{account}");
    let connect = async |act_as: Option<&str>, file: &str| {
        client_for(&token_kubeconfig(
            &worker_token,
            act_as,
            &dir.path().join(file),
        ))
        .await
    };
    let tenant = connect(Some(&as_user(TENANT_ACCOUNT)), "tenant").await;
    assert_eq!(whoami(&tenant).await, as_user(TENANT_ACCOUNT));
    let config_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "written-as-the-tenant"}}))
            .expect("a ConfigMap");
    let write = async |client: &kube::Client, in_ns: &str| {
        Api::<ConfigMap>::namespaced(client.clone(), in_ns)
            .create(&PostParams::default(), &config_map)
            .await
    };
    write(&tenant, namespace)
        .await
        .expect("the tenant's account writes in its namespace");
    forbidden(
        "the tenant's account in another namespace",
        write(&tenant, "default").await,
    );
    let alone = connect(None, "worker").await;
    forbidden("the worker's own token", write(&alone, namespace).await);
    let other = connect(Some(&as_user("default")), "other").await;
    forbidden(
        "impersonating another account of the tenant",
        write(&other, namespace).await,
    );
}

async fn install_and_check(profile: Profile) {
    let helm = std::env::var("HELM_BIN").unwrap_or_else(|_| "helm".into());
    let client = kube::Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    let tag = match profile {
        Profile::Cluster => "cl",
        Profile::Namespaced => "ns",
        Profile::Tenants => "tn",
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 0x10000)
        .unwrap_or_default();
    let namespace = format!("e2e-chart-{tag}-{}-{nonce:04x}", std::process::id());
    // Release names without "helmq" give objects named "<release>-helmq-<role>".
    let release = format!("hq{tag}{}{nonce:04x}", std::process::id());
    let fullname = format!("{release}-helmq");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace,
                "labels": {"app.kubernetes.io/created-by": "helmq-e2e"}}}))
            .expect("namespace"),
        )
        .await
        .expect("create the namespace");
    // The NATS passwords the chart expects in an existing Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "helmq-nats"},
                "stringData": {"admin-password": "a", "producer-password": "p",
                               "worker-password": "w"}}))
            .expect("secret"),
        )
        .await
        .expect("create the NATS Secret");

    let dir = tempfile::tempdir().expect("temp dir");
    let values = dir.path().join("values.yaml");
    let mut values_json = json!({
        "crds": {"install": false},
        "nats": {"url": "nats://nats.nats.svc:4222"},
        "producer": {"replicas": 2},
        "worker": {
            "replicas": 2,
            "allowedSources": ["http://127.0.0.1:8879"],
            "allowedNamespaces": [namespace],
        },
    });
    match profile {
        Profile::Cluster => {}
        Profile::Namespaced => {
            values_json["rbac"] = json!({"profile": "namespaced"});
            values_json["producer"]["watchNamespaces"] = json!([namespace]);
        }
        Profile::Tenants => {
            values_json["rbac"] = json!({"profile": "tenants"});
            values_json["worker"]["defaultServiceAccount"] = json!(TENANT_ACCOUNT);
        }
    }
    std::fs::write(&values, serde_json::to_string_pretty(&values_json).unwrap())
        .expect("write values");
    let chart = workspace_root().join("deploy/chart/helmq");
    let out = run_ok(
        &helm,
        &[
            "install",
            &release,
            chart.to_str().expect("utf-8 path"),
            "-n",
            &namespace,
            "-f",
            values.to_str().expect("utf-8 path"),
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    eprintln!(
        "chart[{tag}]: helm install {release}: {}",
        out.lines().next().unwrap_or("")
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    for role in ["producer", "worker"] {
        let name = format!("{fullname}-{role}");
        let ready = eventually(AVAILABLE_WITHIN, &format!("{name} Available"), async || {
            available(&deployments, &name).await
        })
        .await;
        eprintln!("chart[{tag}]: Deployment {name} Available with {ready} replicas");
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let setup = jobs
        .get(&format!("{fullname}-setup"))
        .await
        .expect("the setup Job (a hook) is kept until the next one");
    assert_eq!(
        setup.status.and_then(|s| s.succeeded),
        Some(1),
        "the setup Job completed"
    );
    let worker = deployments
        .get(&format!("{fullname}-worker"))
        .await
        .expect("worker Deployment");
    let env = worker.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("HELMQ_ALLOWED_SOURCES").as_deref(),
        Some("http://127.0.0.1:8879")
    );
    assert_eq!(
        value("HELMQ_ALLOWED_NAMESPACES").as_deref(),
        Some(namespace.as_str())
    );
    let tenants = profile == Profile::Tenants;
    assert_eq!(
        value("HELMQ_DEFAULT_SERVICE_ACCOUNT").as_deref(),
        tenants.then_some(TENANT_ACCOUNT)
    );

    // What the ServiceAccounts may do, asked of the API server's authorizer: (account, verb,
    // resource, namespace ("": all), allowed).
    let producer = format!("{fullname}-producer");
    let worker = format!("{fullname}-worker");
    let components = "components.deployment-orchestrator.io";
    // The producer's rights are the same in the cluster and tenants profiles.
    let producer_cluster_wide = profile != Profile::Namespaced;
    let cluster_wide = profile == Profile::Cluster;
    let ns = namespace.as_str();
    let tenant_account = format!("serviceaccounts:{TENANT_ACCOUNT}");
    let table = [
        (&producer, "watch", components, ns, true),
        (
            &producer,
            "patch",
            "components.deployment-orchestrator.io/status",
            ns,
            true,
        ),
        (&producer, "create", "events.events.k8s.io", ns, true),
        (&producer, "update", "leases.coordination.k8s.io", ns, true),
        (&producer, "delete", components, ns, false),
        (&producer, "get", "secrets", ns, false),
        (&producer, "watch", components, "", producer_cluster_wide),
        // The single-tenant profiles deploy with the worker's own rights, the tenants profile
        // only through a tenant's ServiceAccount.
        (&worker, "create", "deployments.apps", ns, !tenants),
        (
            &worker,
            "create",
            "deployments.apps",
            "default",
            cluster_wide,
        ),
        (&worker, "create", "deployments.apps", "", cluster_wide),
        (
            &worker,
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "",
            cluster_wide,
        ),
        (&worker, "get", "secrets", "kube-system", cluster_wide),
        (&worker, "delete", "namespaces", "", cluster_wide),
        (&worker, "impersonate", &tenant_account, ns, true),
        // By name only: not another account of the tenant, nor kube-system's controllers
        // (the namespaced profile's Role grants everything in its namespaces).
        (
            &worker,
            "impersonate",
            "serviceaccounts:default",
            ns,
            !tenants,
        ),
        (
            &worker,
            "impersonate",
            "serviceaccounts:namespace-controller",
            "kube-system",
            cluster_wide,
        ),
    ];
    for (account, verb, resource, in_ns, allowed) in table {
        assert_eq!(
            can_i(&client, account, ns, verb, resource, in_ns).await,
            allowed,
            "{account} {verb} {resource} in {in_ns:?}"
        );
    }
    // The accounts that have a ClusterRole of the release (named as they are).
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let with_cluster_roles = async || {
        let mut found = Vec::new();
        for account in [&producer, &worker] {
            let role = cluster_roles.get_opt(account).await;
            if role.expect("read ClusterRoles").is_some() {
                found.push(account.clone());
            }
        }
        found
    };
    let expected = if producer_cluster_wide {
        vec![producer.clone(), worker.clone()]
    } else {
        Vec::new()
    };
    assert_eq!(with_cluster_roles().await, expected);
    if tenants {
        deploys_only_as_the_tenant(&client, ns, &worker).await;
    }

    // An upgrade runs the setup hook again (the previous Job is replaced) and rolls the workers
    // out with the new value.
    let setup_uid = |job: Job| job.metadata.uid.expect("a Job uid");
    let first_setup = setup_uid(
        jobs.get(&format!("{fullname}-setup"))
            .await
            .expect("setup Job"),
    );
    run_ok(
        &helm,
        &[
            "upgrade",
            &release,
            chart.to_str().expect("utf-8 path"),
            "-n",
            &namespace,
            "-f",
            values.to_str().expect("utf-8 path"),
            "--set",
            "worker.concurrency=8",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let setup = jobs
        .get(&format!("{fullname}-setup"))
        .await
        .expect("the setup Job of the upgrade");
    assert_eq!(setup.status.clone().and_then(|s| s.succeeded), Some(1));
    assert_ne!(
        setup_uid(setup),
        first_setup,
        "the upgrade ran a new setup Job"
    );
    let name = format!("{fullname}-worker");
    eventually(
        AVAILABLE_WITHIN,
        &format!("{name} rolled out"),
        async || {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let status = d.status.clone().unwrap_or_default();
            let env = d.spec.unwrap().template.spec.unwrap().containers[0]
                .env
                .clone()
                .unwrap_or_default();
            let concurrency = env
                .iter()
                .find(|e| e.name == "HELMQ_CONCURRENCY")
                .and_then(|e| e.value.clone());
            let current = status.updated_replicas == status.replicas
                && status.observed_generation == d.metadata.generation;
            if concurrency.as_deref() == Some("8") && current {
                available(&deployments, &name).await.map(|_| ())
            } else {
                Err(format!(
                    "concurrency {concurrency:?}, rolled out: {current}"
                ))
            }
        },
    )
    .await;

    run_ok(&helm, &["uninstall", &release, "-n", &namespace, "--wait"]).await;
    for role in ["producer", "worker"] {
        let name = format!("{fullname}-{role}");
        eventually(GONE_WITHIN, &format!("{name} deleted"), async || {
            deployments.get_opt(&name).await.ok().flatten().is_none()
        })
        .await;
    }
    assert_eq!(
        with_cluster_roles().await,
        Vec::<String>::new(),
        "helm uninstall removed the ClusterRoles"
    );
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("delete the namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm (HELMQ_E2E=1, just e2e)"]
async fn the_chart_installs_with_the_cluster_profile() {
    gate!();
    install_and_check(Profile::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm (HELMQ_E2E=1, just e2e)"]
async fn the_chart_installs_with_the_namespaced_profile() {
    gate!();
    install_and_check(Profile::Namespaced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm (HELMQ_E2E=1, just e2e)"]
async fn the_chart_installs_with_the_tenants_profile() {
    gate!();
    install_and_check(Profile::Tenants).await;
}
