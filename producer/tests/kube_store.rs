//! `KubeComponentStore` and `KubeLeaseStore` through the real kube `Client` over a mock HTTP
//! service: the paths, methods, content types and bodies they send, and how API answers map
//! to `StoreError`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use helmq_producer::leader::{ElectionConfig, LeaderElector, Round};
use helmq_producer::store::{
    ComponentStore, ErrorClass, KubeComponentStore, KubeEventStore, KubeLeaseStore, LeaseStore,
    ObjectKey, StoreError,
};
use helmq_producer::writer::events::{
    EventRecorder, EventType, JOB_ID_ANNOTATION, PhaseEvent, Recorded, regarding,
};
use helmq_schemas::component::{
    COORDINATION_FINALIZER, Component, ComponentStatus, HELM_FINALIZER, Phase,
};
use helmq_tests::build::component;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: serde_json::Value,
}

type Reply = Box<dyn Fn(&Seen) -> (StatusCode, serde_json::Value) + Send + Sync>;

/// A kube client whose requests are recorded and answered by `reply`.
fn mock_client(reply: Reply) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reply = Arc::new(reply);
    let log = seen.clone();
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let (log, reply) = (log.clone(), reply.clone());
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: if bytes.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                },
            };
            let (status, answer) = reply(&seen);
            log.lock().unwrap().push(seen);
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&answer).unwrap())))
                    .unwrap(),
            )
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn web(finalizers: &[&str], resource_version: &str) -> Component {
    component("web")
        .uid("uid-1")
        .generation(1)
        .resource_version(resource_version)
        .finalizers(finalizers)
        .build()
}

fn api_status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the object has been modified ({reason})"), "reason": reason, "code": code
    })
}

const PATH: &str = "/apis/deployment-orchestrator.io/v1alpha1/namespaces/default/components/web";

#[tokio::test]
async fn claim_is_a_merge_patch_carrying_the_resource_version() {
    let (client, seen) = mock_client(Box::new(|_| {
        let answer = web(&[COORDINATION_FINALIZER, HELM_FINALIZER], "43");
        (StatusCode::OK, serde_json::to_value(answer).unwrap())
    }));
    let store = KubeComponentStore::new(client, vec![]);
    let claimed = store
        .add_finalizer(&web(&[COORDINATION_FINALIZER], "42"))
        .await
        .unwrap()
        .into_component();
    assert_eq!(claimed.metadata.resource_version.as_deref(), Some("43"));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].path.split('?').next().unwrap(), PATH);
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(
        seen[0].body,
        serde_json::json!({"metadata": {
            "resourceVersion": "42",
            "finalizers": [COORDINATION_FINALIZER, HELM_FINALIZER],
        }})
    );
}

#[tokio::test]
async fn a_409_is_a_conflict_and_a_404_is_not_found() {
    let (client, _) = mock_client(Box::new(|seen| {
        if seen.method == "PATCH" {
            (StatusCode::CONFLICT, api_status(409, "Conflict"))
        } else {
            (StatusCode::NOT_FOUND, api_status(404, "NotFound"))
        }
    }));
    let store = KubeComponentStore::new(client, vec![]);
    let err = store.add_finalizer(&web(&[], "42")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(key) if *key == ObjectKey::new("default", "web")),
        "{err:?}"
    );
    assert_eq!(store.get("default", "web").await.unwrap(), None);
}

#[tokio::test]
async fn server_errors_are_transient_and_validation_errors_are_not() {
    for (code, transient) in [
        (500u16, true),
        (503, true),
        (429, true),
        (422, false),
        (403, false),
    ] {
        let (client, _) = mock_client(Box::new(move |_| {
            (
                StatusCode::from_u16(code).unwrap(),
                api_status(code, "Whatever"),
            )
        }));
        let store = KubeComponentStore::new(client, vec![]);
        let err = store.add_finalizer(&web(&[], "1")).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Rejected { code: c, .. } if c == code),
            "{err}"
        );
        assert_eq!(err.is_transient(), transient, "{code}");
        let class = if transient {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        assert_eq!(err.class(), class, "{code}");
    }
}

#[tokio::test]
async fn a_request_that_cannot_be_built_is_permanent() {
    let (client, seen) = mock_client(Box::new(|_| (StatusCode::OK, serde_json::json!({}))));
    let store = KubeComponentStore::new(client, vec![]);
    let unnamable = component("web server").resource_version("1").build();
    let err = store
        .patch_status(&unnamable, &ComponentStatus::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(!err.is_transient());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn status_goes_to_the_status_subresource_with_the_resource_version() {
    let (client, seen) = mock_client(Box::new(|seen| {
        let mut answer = web(&[HELM_FINALIZER], "8");
        answer.status = serde_json::from_value(seen.body["status"].clone()).unwrap();
        (StatusCode::OK, serde_json::to_value(answer).unwrap())
    }));
    let store = KubeComponentStore::new(client, vec![]);
    let status = ComponentStatus {
        phase: Some(Phase::Ready),
        message: Some("deployed".into()),
        observed_generation: Some(1),
        ..Default::default()
    };
    let updated = store
        .patch_status(&web(&[HELM_FINALIZER], "7"), &status)
        .await
        .unwrap()
        .into_component();
    assert_eq!(updated.status, Some(status));
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(
        seen[0].path.split('?').next().unwrap(),
        format!("{PATH}/status")
    );
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(
        seen[0].body,
        serde_json::json!({
            "metadata": {"resourceVersion": "7"},
            "status": {"phase": "Ready", "message": "deployed", "observedGeneration": 1},
        })
    );
}

#[tokio::test]
async fn removing_the_last_finalizer_of_a_deleting_object_reports_it_gone() {
    let (client, seen) = mock_client(Box::new(|_| {
        let mut answer = web(&[], "10");
        answer.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        (StatusCode::OK, serde_json::to_value(answer).unwrap())
    }));
    let store = KubeComponentStore::new(client, vec![]);
    let mut deleting = web(&[HELM_FINALIZER], "9");
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    assert_eq!(store.remove_finalizer(&deleting).await.unwrap(), None);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].path.split('?').next().unwrap(), PATH);
    assert_eq!(
        seen[0].body,
        serde_json::json!({"metadata": {"resourceVersion": "9", "finalizers": []}})
    );
}

#[tokio::test]
async fn list_covers_all_namespaces_or_each_configured_one() {
    let empty_list = || {
        serde_json::json!({"apiVersion": "deployment-orchestrator.io/v1alpha1", "kind": "ComponentList",
            "metadata": {"resourceVersion": "1"}, "items": [serde_json::to_value(web(&[], "1")).unwrap()]})
    };
    let (client, seen) = mock_client(Box::new(move |_| (StatusCode::OK, empty_list())));
    let all = KubeComponentStore::new(client, vec![])
        .list()
        .await
        .unwrap();
    assert_eq!(all.components.len(), 1);
    assert_eq!(
        seen.lock().unwrap()[0].path.split('?').next().unwrap(),
        "/apis/deployment-orchestrator.io/v1alpha1/components"
    );
    let (client, seen) = mock_client(Box::new(move |_| (StatusCode::OK, empty_list())));
    let some = KubeComponentStore::new(client, vec!["a".into(), "b".into()])
        .list()
        .await
        .unwrap();
    assert_eq!(some.components.len(), 2);
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.split('?').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/apis/deployment-orchestrator.io/v1alpha1/namespaces/a/components",
            "/apis/deployment-orchestrator.io/v1alpha1/namespaces/b/components"
        ]
    );
}

#[tokio::test]
async fn cached_reads_come_from_the_store_s_own_watch_and_writes_while_it_watches() {
    use futures::StreamExt as _;
    use helmq_producer::store::Change;

    let (client, seen) = mock_client(Box::new(|seen| {
        if seen.method == "PATCH" {
            let mut answer = web(&[HELM_FINALIZER], "8");
            answer.status = serde_json::from_value(seen.body["status"].clone()).unwrap();
            return (StatusCode::OK, serde_json::to_value(answer).unwrap());
        }
        if seen.path.contains("/components/") {
            // A GET of the object: the API server's copy.
            return (StatusCode::OK, serde_json::to_value(web(&[], "9")).unwrap());
        }
        (
            StatusCode::OK,
            serde_json::json!({"apiVersion": "deployment-orchestrator.io/v1alpha1",
                "kind": "ComponentList", "metadata": {"resourceVersion": "5"},
                "items": [serde_json::to_value(web(&[], "5")).unwrap()]}),
        )
    }));
    let store = KubeComponentStore::new(client, vec![]);
    let requests = || seen.lock().unwrap().len();
    let version = |observed: Option<helmq_producer::store::Observed>| {
        observed.unwrap().into_component().metadata.resource_version
    };

    // Without a watch in this process: the API server's watch cache.
    assert_eq!(
        version(store.get_cached("default", "web").await.unwrap()).as_deref(),
        Some("9")
    );
    assert!(seen.lock().unwrap()[0].path.contains("resourceVersion=0"));
    assert_eq!(requests(), 1);

    // The watch's listing, then cached reads without a request.
    let mut changes = store.changes();
    assert!(matches!(changes.next().await, Some(Change::Restarted)));
    assert!(matches!(changes.next().await, Some(Change::Applied(_))));
    let listed = requests();
    assert_eq!(
        version(store.get_cached("default", "web").await.unwrap()).as_deref(),
        Some("5")
    );
    assert_eq!(
        store
            .get_cached("default", "other")
            .await
            .unwrap()
            .map(|_| ()),
        Some(()),
        "an object the watch has not seen is read from the API server"
    );
    assert_eq!(requests(), listed + 1);

    // A write's answer refreshes the copy; a clone of the store shares it.
    let status = ComponentStatus {
        phase: Some(Phase::Deploying),
        ..Default::default()
    };
    store
        .patch_status(&web(&[HELM_FINALIZER], "5"), &status)
        .await
        .unwrap();
    let cached = store
        .clone()
        .get_cached("default", "web")
        .await
        .unwrap()
        .unwrap()
        .into_component();
    assert_eq!(cached.metadata.resource_version.as_deref(), Some("8"));
    assert_eq!(cached.status.and_then(|s| s.phase), Some(Phase::Deploying));
    assert_eq!(requests(), listed + 2);

    // So does a fresh read's.
    store.get("default", "web").await.unwrap();
    assert_eq!(
        version(store.get_cached("default", "web").await.unwrap()).as_deref(),
        Some("9")
    );
    assert_eq!(requests(), listed + 3);

    // The watch ends: back to the API server.
    drop(changes);
    assert_eq!(
        version(store.get_cached("default", "web").await.unwrap()).as_deref(),
        Some("9")
    );
    assert_eq!(requests(), listed + 4);
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/helmq-system/leases";

fn lease(holder: &str, resource_version: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"namespace": "helmq-system", "name": "helmq-producer",
            "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
            "renewTime": "2020-01-01T00:00:00.000000Z"},
    })
}

#[tokio::test]
async fn lease_reads_and_replaces_go_to_the_lease_path_with_the_resource_version() {
    let (client, seen) = mock_client(Box::new(|seen| match seen.method.as_str() {
        "GET" => (StatusCode::OK, lease("other", "7")),
        _ => (StatusCode::OK, {
            let mut answer = seen.body.clone();
            answer["metadata"]["resourceVersion"] = "8".into();
            answer
        }),
    }));
    let store = KubeLeaseStore::new(client);
    let read = store
        .get("helmq-system", "helmq-producer")
        .await
        .unwrap()
        .unwrap();
    let mut mine = read.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("me".into());
    let replaced = store.replace(&mine).await.unwrap();
    assert_eq!(replaced.metadata.resource_version.as_deref(), Some("8"));

    let seen = seen.lock().unwrap();
    let name = format!("{LEASES}/helmq-producer");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path.split('?').next().unwrap(), name);
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].path.split('?').next().unwrap(), name);
    assert_eq!(seen[1].content_type, "application/json");
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "7");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
}

#[tokio::test]
async fn an_absent_lease_is_created_and_conflicts_map_to_conflict() {
    let (client, seen) = mock_client(Box::new(|seen| match seen.method.as_str() {
        "GET" => (StatusCode::NOT_FOUND, api_status(404, "NotFound")),
        "POST" => (StatusCode::CREATED, {
            let mut answer = seen.body.clone();
            answer["metadata"]["resourceVersion"] = "1".into();
            answer
        }),
        _ => (StatusCode::CONFLICT, api_status(409, "Conflict")),
    }));
    let store = KubeLeaseStore::new(client);
    let elector = LeaderElector::new(
        store.clone(),
        ElectionConfig::new(
            "helmq-system",
            "helmq-producer",
            "me",
            std::time::Duration::from_secs(15),
        ),
    );
    assert_eq!(elector.round().await.unwrap(), Round::Leading);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            (
                seen[0].method.as_str(),
                seen[0].path.split('?').next().unwrap()
            ),
            ("GET", format!("{LEASES}/helmq-producer").as_str())
        );
        assert_eq!(
            (
                seen[1].method.as_str(),
                seen[1].path.split('?').next().unwrap()
            ),
            ("POST", LEASES)
        );
        let body = &seen[1].body;
        assert_eq!(body["metadata"]["name"], "helmq-producer");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert!(body["spec"]["renewTime"].is_string(), "{body}");
    }
    let stale: k8s_openapi::api::coordination::v1::Lease =
        serde_json::from_value(lease("me", "1")).unwrap();
    let err = store.replace(&stale).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(key)
            if *key == ObjectKey::new("helmq-system", "helmq-producer")),
        "{err:?}"
    );
}

fn failed(note: &str, job: &str) -> PhaseEvent {
    PhaseEvent {
        type_: EventType::Warning,
        reason: "Failed",
        action: "Apply",
        note: note.into(),
        job_id: job.into(),
    }
}

#[tokio::test]
async fn events_are_created_then_their_series_patched_and_re_created_when_expired() {
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gone = expired.clone();
    let (client, seen) = mock_client(Box::new(move |seen| {
        if seen.method == "PATCH" && gone.load(std::sync::atomic::Ordering::SeqCst) {
            (StatusCode::NOT_FOUND, api_status(404, "NotFound"))
        } else {
            (StatusCode::OK, seen.body.clone())
        }
    }));
    let recorder = EventRecorder::new(KubeEventStore::new(client), "producer-0");
    let about = regarding(&web(&[HELM_FINALIZER], "42"));
    let t0 = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    let at = |secs| t0 + jiff::SignedDuration::from_secs(secs);
    let steps = [
        (failed("chart not found", "j1"), at(0), Recorded::Created),
        (
            failed("chart not found", "j2"),
            at(10),
            Recorded::Repeated(2),
        ),
        (failed("another reason", "j3"), at(20), Recorded::Created),
    ];
    for (event, now, want) in &steps {
        assert_eq!(recorder.record(&about, event, *now).await.unwrap(), *want);
    }
    expired.store(true, std::sync::atomic::Ordering::SeqCst);
    let again = recorder
        .record(&about, &failed("chart not found", "j4"), at(30))
        .await;
    assert_eq!(again.unwrap(), Recorded::Created);

    let seen = seen.lock().unwrap();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.split('?').next().unwrap()))
        .collect();
    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    let first_name = seen[0].body["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = format!("{events}/{first_name}");
    assert_eq!(
        calls,
        [
            ("POST", events),
            ("PATCH", first.as_str()),
            ("POST", events),
            ("PATCH", first.as_str()),
            ("POST", events),
        ]
    );
    assert!(first_name.starts_with("web."), "{first_name}");
    let created = &seen[0].body;
    assert_eq!(created["type"], "Warning");
    assert_eq!(created["reason"], "Failed");
    assert_eq!(created["action"], "Apply");
    assert_eq!(created["note"], "chart not found");
    assert_eq!(created["reportingController"], "helmq-producer");
    assert_eq!(created["reportingInstance"], "producer-0");
    assert_eq!(created["metadata"]["annotations"][JOB_ID_ANNOTATION], "j1");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(
        created["regarding"],
        serde_json::json!({
            "apiVersion": "deployment-orchestrator.io/v1alpha1", "kind": "Component",
            "namespace": "default", "name": "web", "uid": "uid-1",
        })
    );
    assert!(created["eventTime"].is_string(), "{created}");
    assert!(created.get("series").is_none(), "{created}");
    assert_eq!(seen[1].content_type, "application/merge-patch+json");
    assert_eq!(
        seen[1].body,
        serde_json::json!({
            "metadata": {"annotations": {JOB_ID_ANNOTATION: "j2"}},
            "series": {"count": 2, "lastObservedTime": "2023-11-14T22:13:30.000000Z"},
        })
    );
    assert_eq!(seen[2].body["note"], "another reason");
    assert_eq!(
        seen[4].body["metadata"]["annotations"][JOB_ID_ANNOTATION],
        "j4"
    );
    assert_ne!(seen[4].body["metadata"]["name"], first_name.as_str());
}
