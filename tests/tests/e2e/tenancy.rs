//! Many tenants, one helmq, on a real API server with RBAC: the workers run with the
//! multi-tenant profile's rights only (`deploy/rbac/worker-tenants.yaml`: impersonating the
//! tenants' `helmq-deployer` accounts) and `--default-service-account helmq-deployer`; each
//! tenant is onboarded as `deploy/examples/tenant.yaml` does (its account bound to `admin` in
//! its own namespace). Tenant A is the stack's namespace (its Components), tenant B the
//! namespace `<stack>-rel` (an orchestrator publishing jobs on B's subjects).
//!
//! What A tries, as an adversarial tenant would, and what must hold: A's Component naming B's
//! release neither upgrades nor uninstalls it; a raw delete job on A's subject touches neither
//! B's release nor B's namespace; a chart rendering a ClusterRoleBinding from values fails
//! `forbidden` and leaves no binding; a `lookup` of a kube-system Secret in values reveals
//! nothing; a second Component naming an owned release is `Failed` naming the owner.
//!
//! And in single-tenant mode (the worker's own rights): a namespace that existed before
//! survives the deletion of a Component with `manageNamespace: true`; an invalid job naming
//! another tenant's Component (on the wrong subject, or undecodable) and forged status events
//! carrying its real uid leave it unchanged.

use std::time::Duration;

use base64::Engine as _;

use helmq_schemas::event::{ComponentRef, JobAction, JobEvent, StatusEvent, StatusPhase};
use helmq_schemas::subject::{job_subject, status_subject};
use helmq_schemas::{HelmConfig, Phase};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::rbac::{apply, create_namespace, manifests, tenant, token, token_kubeconfig};
use crate::support::{Options, READY_WITHIN, Stack, gate};

/// Publishes an orchestrator job (no uid) on `namespace`'s subjects, as a tenant may.
async fn publish_raw(stack: &Stack, namespace: &str, name: &str, action: JobAction, config: Value) {
    let config = HelmConfig::parse(Some(&config), namespace, name).expect("a valid config");
    let job = JobEvent::new(
        action,
        ComponentRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            generation: 1,
        },
        config,
        120,
        jiff::Timestamp::now(),
    );
    stack
        .queue
        .jetstream()
        .await
        .publish(job_subject(namespace, name), job.encode().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// The final status of an orchestrator job.
async fn final_status(stack: &Stack, namespace: &str, name: &str) -> (StatusPhase, String) {
    let deadline = std::time::Instant::now() + READY_WITHIN;
    loop {
        let events = stack.queue.status_events_in(namespace, name).await;
        if let Some(last) = events.iter().rev().find(|e| {
            matches!(
                e.phase,
                StatusPhase::Ready
                    | StatusPhase::Failed
                    | StatusPhase::Terminated
                    | StatusPhase::TerminationFailed
            )
        }) {
            return (last.phase, last.message.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{namespace}/{name}: no final status; events: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `greeting` of release `release`'s ConfigMap (the hello chart's).
async fn greeting(client: &kube::Client, namespace: &str, release: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&format!("{release}-hello"))
        .await
        .expect("get ConfigMap")
        .and_then(|c| c.data?.get("greeting").cloned())
}

/// Waits for a Component's `Failed` (or `TerminationFailed`) and returns its message.
async fn failed(stack: &Stack, name: &str, phase: Phase) -> String {
    stack
        .cluster
        .wait_for(name, READY_WITHIN, &format!("{phase:?}"), |c| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.phase == Some(phase))
        })
        .await
        .and_then(|c| c.status?.message)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_tenant_reaches_neither_another_tenants_release_nor_namespace_nor_the_cluster() {
    gate!();
    let admin = kube::Client::try_default().await.expect("a cluster");
    let suffix = format!("e2e-tenancy-{}", std::process::id());
    let system = format!("{suffix}-system");
    create_namespace(&admin, &system).await;
    apply(&admin, manifests("worker-tenants", &suffix)).await;
    let dir = tempfile::tempdir().unwrap();
    let worker_kubeconfig = token_kubeconfig(
        &token(&admin, &system, "helmq-worker").await,
        None,
        &dir.path().join("worker.kubeconfig"),
    );
    let stack = Stack::start_with(Options {
        worker_args: ["--default-service-account", "helmq-deployer"]
            .map(str::to_owned)
            .to_vec(),
        worker_kubeconfig: Some(worker_kubeconfig),
        charts: vec!["hello", "extras"],
        workers: 1,
        ..Options::new("tenancy")
    })
    .await;
    let team_a = stack.cluster.namespace().to_owned();
    let team_b = format!("{team_a}-rel");
    create_namespace(&admin, &team_b).await;
    for namespace in [&team_a, &team_b] {
        apply(&admin, tenant(namespace)).await;
    }
    let hello = |release: &str, namespace: &str, manage: bool, greeting: &str| {
        stack.charts.chart_config(
            "hello",
            "0.1.0",
            release,
            namespace,
            manage,
            json!({ "greeting": greeting }),
        )
    };

    // B's release, installed by B's orchestrator as B.
    publish_raw(
        &stack,
        &team_b,
        "b-app",
        JobAction::Apply,
        hello("b-app", &team_b, false, "owned-by-b"),
    )
    .await;
    let (phase, message) = final_status(&stack, &team_b, "b-app").await;
    assert_eq!(phase, StatusPhase::Ready, "{message}");
    assert_eq!(
        greeting(&admin, &team_b, "b-app").await.as_deref(),
        Some("owned-by-b")
    );

    // A's Component naming B's release: A's account may not even read it.
    stack
        .cluster
        .create("intruder", hello("b-app", &team_b, false, "owned-by-a"))
        .await;
    let message = failed(&stack, "intruder", Phase::Failed).await;
    assert!(message.contains("forbidden"), "{message}");
    // Deleting it does not uninstall B's release either.
    stack
        .cluster
        .components()
        .delete("intruder", &Default::default())
        .await
        .expect("delete intruder");
    let message = failed(&stack, "intruder", Phase::TerminationFailed).await;
    assert!(message.contains("forbidden"), "{message}");

    // A raw delete job on A's subject naming B's release and namespace.
    publish_raw(
        &stack,
        &team_a,
        "thief",
        JobAction::Delete,
        hello("b-app", &team_b, true, "x"),
    )
    .await;
    let (phase, message) = final_status(&stack, &team_a, "thief").await;
    assert_eq!(phase, StatusPhase::TerminationFailed, "{message}");
    assert!(message.contains("forbidden"), "{message}");
    assert_eq!(
        greeting(&admin, &team_b, "b-app").await.as_deref(),
        Some("owned-by-b"),
        "B's release untouched"
    );
    assert_eq!(
        stack
            .cluster
            .release_status("b-app", &team_b)
            .await
            .as_deref(),
        Some("deployed")
    );
    let b_namespace = Api::<Namespace>::all(admin.clone())
        .get(&team_b)
        .await
        .expect("B's namespace");
    assert_eq!(
        b_namespace.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );

    // cluster-admin through chart values: a ClusterRoleBinding rendered from values.
    let binding = format!("{suffix}-escalate");
    let escalate = stack.charts.chart_config(
        "extras",
        "0.1.0",
        "escalate",
        &team_a,
        false,
        json!({"extraObjects": [{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "helmq-deployer", "namespace": team_a}]
        }]}),
    );
    stack.cluster.create("escalate", escalate).await;
    let message = failed(&stack, "escalate", Phase::Failed).await;
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        Api::<ClusterRoleBinding>::all(admin.clone())
            .get_opt(&binding)
            .await
            .expect("get ClusterRoleBinding")
            .is_none(),
        "no binding"
    );

    // A kube-system Secret read through `lookup` in values.
    let secret_name = format!("{suffix}-secret");
    let secret_value = "do-not-reveal-4242";
    Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": secret_name},
                "stringData": {"password": secret_value}
            }))
            .unwrap(),
        )
        .await
        .expect("create the kube-system Secret");
    let peek = stack.charts.chart_config(
        "extras",
        "0.1.0",
        "peek",
        &team_a,
        false,
        json!({"extraObjects": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "peek"},
            "data": {"stolen": format!(
                "{{{{ (lookup \"v1\" \"Secret\" \"kube-system\" \"{secret_name}\").data | toJson }}}}"
            )}
        }]}),
    );
    stack.cluster.create("peek", peek).await;
    let peeked = stack
        .cluster
        .wait_for("peek", READY_WITHIN, "Ready or Failed", |c| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| matches!(s.phase, Some(Phase::Ready | Phase::Failed)))
        })
        .await
        .and_then(|c| c.status)
        .expect("a status");
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret_value);
    let stolen = Api::<ConfigMap>::namespaced(admin.clone(), &team_a)
        .get_opt("peek")
        .await
        .expect("get ConfigMap")
        .and_then(|c| c.data?.get("stolen").cloned())
        .unwrap_or_default();
    for text in [
        stolen.as_str(),
        peeked.message.as_deref().unwrap_or_default(),
    ] {
        assert!(
            !text.contains(&encoded) && !text.contains(secret_value),
            "the Secret leaked: {text}"
        );
    }
    if peeked.phase == Some(Phase::Failed) {
        let message = peeked.message.unwrap_or_default();
        assert!(message.contains("forbidden"), "{message}");
    }

    // Two Components naming one release: the first keeps it.
    stack
        .cluster
        .create("first", hello("shared", &team_a, false, "first"))
        .await;
    stack.cluster.wait_phase("first", Phase::Ready, 1).await;
    stack
        .cluster
        .create("second", hello("shared", &team_a, false, "second"))
        .await;
    let message = failed(&stack, "second", Phase::Failed).await;
    assert!(
        message.starts_with(&format!(
            "release {team_a}/shared belongs to Component {team_a}/first (uid "
        )),
        "{message}"
    );
    assert_eq!(
        greeting(&admin, &team_a, "shared").await.as_deref(),
        Some("first")
    );

    // Clean-up the case owes the cluster: the stuck finalizer, the Secret, the namespaces.
    stack
        .cluster
        .components()
        .patch(
            "intruder",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove intruder's finalizer");
    let _ = Api::<Secret>::namespaced(admin.clone(), "kube-system")
        .delete(&secret_name, &Default::default())
        .await;
    for namespace in [&team_b, &system] {
        let _ = Api::<Namespace>::all(admin.clone())
            .delete(namespace, &Default::default())
            .await;
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_namespace_that_existed_before_survives_its_components_deletion() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        ..Options::new("prens")
    })
    .await;
    let admin = stack.cluster.client().clone();
    let existing = format!("{}-app", stack.cluster.namespace());
    create_namespace(&admin, &existing).await;
    Api::<ConfigMap>::namespaced(admin.clone(), &existing)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "precious"}, "data": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .expect("create the ConfigMap");
    let created = format!("{}-rel", stack.cluster.namespace());
    for (name, namespace) in [("keep", &existing), ("made", &created)] {
        let config = stack.charts.chart_config(
            "hello",
            "0.1.0",
            name,
            namespace,
            true,
            json!({"greeting": name}),
        );
        stack.cluster.create(name, config).await;
        stack.cluster.wait_phase(name, Phase::Ready, 1).await;
    }
    stack.cluster.delete_and_wait_gone("keep").await;
    stack.cluster.delete_and_wait_gone("made").await;
    let namespaces = Api::<Namespace>::all(admin.clone());
    let kept = namespaces.get(&existing).await.expect("still there");
    assert_eq!(kept.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &existing)
            .get_opt("precious")
            .await
            .expect("get ConfigMap")
            .is_some()
    );
    // The namespace helmq created for "made" carries its owner and is deleted with it.
    stack.cluster.wait_namespace_gone(&created).await;
    let _ = namespaces.delete(&existing, &Default::default()).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn neither_an_invalid_job_nor_a_forged_status_event_changes_a_component() {
    gate!();
    let stack = Stack::start_with(Options {
        workers: 1,
        ..Options::new("forged")
    })
    .await;
    let team_a = stack.cluster.namespace().to_owned();
    let other = format!("{team_a}-app");
    let config = stack.charts.hello_config("victim", "0.1.0", "untouched");
    stack.cluster.create("victim", config).await;
    let ready = stack.cluster.wait_phase("victim", Phase::Ready, 1).await;
    let uid = ready.metadata.uid.clone().expect("uid");
    let before = ready.status.clone().expect("status");
    let js = stack.queue.jetstream().await;

    // On another tenant's subject, a job naming the victim at generation 2^53; and a payload
    // that cannot be decoded, naming it too.
    let victim_ref = |generation| ComponentRef {
        namespace: team_a.clone(),
        name: "victim".into(),
        uid: Some(uid.clone()),
        generation,
    };
    let foreign = JobEvent::new(
        JobAction::Delete,
        victim_ref(1 << 53),
        HelmConfig::parse(
            Some(&stack.charts.hello_config("victim", "0.1.0", "x")),
            &team_a,
            "victim",
        )
        .expect("config"),
        60,
        jiff::Timestamp::now(),
    );
    js.publish(job_subject(&other, "victim"), foreign.encode().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let broken = json!({"schema": "helmq.job/v1", "component": {"namespace": team_a, "name": "victim",
                        "uid": uid, "generation": 9}, "action": "delete", "config": 7});
    js.publish(
        job_subject(&team_a, "victim"),
        serde_json::to_vec(&broken).unwrap().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    // Forged status events with the victim's real uid: a failure, and a Terminated.
    for phase in [StatusPhase::Failed, StatusPhase::Terminated] {
        let forged = StatusEvent::new(
            format!("{uid}:1:apply:forged"),
            victim_ref(1),
            phase,
            "forged",
            9,
            "mallory",
            jiff::Timestamp::now(),
        );
        js.publish(status_subject(&team_a, "victim"), forged.encode().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    // Both jobs reach the dead-letter stream; then the writer has had its chance.
    let deadline = std::time::Instant::now() + READY_WITHIN;
    while stack.queue.dead_letters().await < 2 {
        assert!(std::time::Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stack
        .cluster
        .components()
        .get("victim")
        .await
        .expect("the victim is still there");
    let status = after.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Ready));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.message, before.message);
    assert!(after.metadata.finalizers.unwrap_or_default().len() == 1);
    assert_eq!(
        greeting(stack.cluster.client(), &team_a, "victim")
            .await
            .as_deref(),
        Some("untouched")
    );
    // Its owner still changes it.
    stack
        .cluster
        .patch_config(
            "victim",
            stack.charts.hello_config("victim", "0.1.0", "changed"),
        )
        .await;
    stack.cluster.wait_phase("victim", Phase::Ready, 2).await;
    stack.cluster.delete_and_wait_gone("victim").await;
    stack.stop().await;
}
