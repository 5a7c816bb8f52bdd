//! `config.valuesFrom` on a real cluster: values from a ConfigMap and, at a `targetPath`, from
//! a Secret reach the release, read with the tenant's rights; an edit of the labelled
//! ConfigMap upgrades the release within 30 s; the Secret's data appears in no Component status,
//! no Event, no log line of helmq and no NATS message; the status records only digests, and a
//! missing required Secret fails naming it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use helmq_schemas::Phase;
use helmq_schemas::component::WATCH_LABEL;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::{READY_WITHIN, Stack, gate, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn values_from_a_configmap_and_a_secret_reach_the_release_and_the_secret_nothing_else() {
    gate!();
    let stack = Stack::start("values-from").await;
    let ns = stack.cluster.namespace().to_owned();
    let client = stack.cluster.client().clone();
    let secret_text = format!("s3cret-{}", std::process::id());

    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("web-values".into());
    cm.metadata.labels = Some(BTreeMap::from([(
        WATCH_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    cm.data = Some(BTreeMap::from([(
        "values.yaml".to_owned(),
        "replicaCount: 3\ngreeting: from-the-configmap\n".to_owned(),
    )]));
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create the values ConfigMap");
    let mut secret = Secret::default();
    secret.metadata.name = Some("web-greeting".into());
    secret.data = Some(BTreeMap::from([(
        "text".to_owned(),
        ByteString(secret_text.clone().into_bytes()),
    )]));
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");

    let mut config = stack
        .charts
        .chart_config("hello", "0.1.0", "web", &ns, false, json!({}));
    config["valuesFrom"] = json!([
        {"kind": "ConfigMap", "name": "web-values"},
        {"kind": "Secret", "name": "web-greeting", "valuesKey": "text", "targetPath": "greeting"},
    ]);
    stack.cluster.create("web", config.clone()).await;
    let ready = stack.cluster.wait_phase("web", Phase::Ready, 1).await;

    // The release got both: the Secret's text over the ConfigMap's greeting.
    let released = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("web-hello")
        .await
        .expect("the chart's ConfigMap");
    let data = released.data.unwrap_or_default();
    assert_eq!(data.get("greeting"), Some(&secret_text));
    assert_eq!(data.get("replicaCount").map(String::as_str), Some("3"));
    let record = ready.status.clone().unwrap().handler_status.unwrap();
    assert!(
        record
            .values_digest
            .as_deref()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{record:?}"
    );

    // An edit of the labelled ConfigMap upgrades the release within 30 s, no spec change.
    let edited = Instant::now();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            "web-values",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"values.yaml": "replicaCount: 4\n"}})),
        )
        .await
        .expect("edit the values ConfigMap");
    let released = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    loop {
        let data = released
            .get("web-hello")
            .await
            .unwrap()
            .data
            .unwrap_or_default();
        if data.get("replicaCount").map(String::as_str) == Some("4") {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(30),
            "the edit did not reach the release within 30 s: {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "e2e[values-from]: labelled ConfigMap edit reached the release in {:.1}s",
        edited.elapsed().as_secs_f64()
    );
    let upgraded = stack
        .cluster
        .wait_for("web", READY_WITHIN, "Ready after the refresh", |c| {
            let Some(status) = c.and_then(|c| c.status.as_ref()) else {
                return false;
            };
            status.phase == Some(Phase::Ready)
                && status
                    .handler_status
                    .as_ref()
                    .is_some_and(|h| h.observed_refresh >= Some(1))
        })
        .await
        .unwrap();
    let status = upgraded.status.unwrap();
    assert_eq!(status.observed_generation, Some(1), "no spec change");
    assert_eq!(status.handler_status.unwrap().revision, Some(2));

    // A missing required Secret fails the deploy naming it.
    let mut missing = config.clone();
    missing["releaseName"] = json!("web2");
    missing["valuesFrom"][1]["name"] = json!("no-such-secret");
    stack.cluster.create("web2", missing).await;
    let failed = stack
        .cluster
        .wait_for("web2", READY_WITHIN, "Failed", |c| {
            phase(c) == Some(Phase::Failed)
        })
        .await
        .unwrap();
    let message = failed.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains(&format!("Secret {ns}/no-such-secret not found")),
        "{message}"
    );

    // The Secret's text is nowhere helmq writes: statuses, Events, logs, NATS messages.
    let components = stack
        .cluster
        .components()
        .list(&ListParams::default())
        .await
        .unwrap();
    for component in &components.items {
        let status = serde_json::to_string(&component.status).unwrap();
        assert!(!status.contains(&secret_text), "status: {status}");
    }
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(!events.items.is_empty(), "the writer recorded Events");
    for event in &events.items {
        let text = serde_json::to_string(event).unwrap();
        assert!(!text.contains(&secret_text), "event: {text}");
    }
    let logs = stack.processes.logs();
    assert!(!logs.is_empty());
    assert!(!logs.contains(&secret_text), "a log line holds the secret");
    let messages = stack.queue.stored_messages().await;
    assert!(!messages.is_empty());
    for message in &messages {
        let payload = String::from_utf8_lossy(&message.payload);
        assert!(
            !payload.contains(&secret_text),
            "{}: {payload}",
            message.subject
        );
    }
    for name in ["web", "web2"] {
        stack.cluster.delete_and_wait_gone(name).await;
    }
    stack.stop().await;
}
