//! One Component the JSON decoder cannot read (its values nested 200 deep, beyond serde_json's
//! 128 levels, which the API server accepts) next to healthy ones, through the real kube client
//! and `KubeComponentStore` over a mock API server that serves a list and a watch stream, with
//! the real watcher publishing to a real nats-server: the healthy ones are claimed and their
//! apply jobs published, the unreadable ones are claimed and fail with the reason, once, and
//! the watch keeps its resourceVersion (bookmarks, resume, 410 → list again).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use helmq_producer::metrics::Metrics;
use helmq_producer::store::KubeComponentStore;
use helmq_producer::watcher::{Watcher, WatcherConfig};
use helmq_queue::topology::{JOBS_STREAM, STATUS_STREAM};
use helmq_queue::{JetStreamQueue, JetStreamStatus, Topology};
use helmq_schemas::component::HELM_FINALIZER;
use helmq_schemas::event::{JobEvent, StatusEvent, StatusPhase};
use helmq_tests::NatsServer;
use helmq_tests::build::{component, nginx_config};
use helmq_tests::wait::eventually;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// `{"a":{"a":...1...}}`, `depth` objects deep (built, not parsed: no depth limit).
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

fn object(name: &str, values: Value) -> Value {
    let built = component(name)
        .uid(&helmq_tests::build::uid(name))
        .generation(1)
        .resource_version("1")
        .config(nginx_config(json!({})))
        .build();
    let mut object = serde_json::to_value(built).unwrap();
    object["spec"]["config"]["values"] = values;
    object
}

/// The mock API server's state: the objects, and what it was asked.
#[derive(Default)]
struct Api {
    objects: BTreeMap<String, Value>,
    version: u64,
    /// `list` or `watch@<resourceVersion>`, in order.
    requests: Vec<String>,
}

impl Api {
    fn bump(&mut self, name: &str) -> Value {
        self.version += 1;
        let object = self.objects.get_mut(name).unwrap();
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        object.clone()
    }
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        kv.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(str::to_owned)
    })
}

fn line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

/// Answers list, watch, get and patch of Components (and of labelled ConfigMaps: none). The first watch streams two more objects
/// (one unreadable) and a bookmark, then ends; the second answers 410 Gone; later ones hang.
async fn answer(api: Arc<Mutex<Api>>, request: Request<kube::client::Body>) -> String {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().to_owned();
    // The watch of labelled valuesFrom ConfigMaps: none listed, and a watch that never reports.
    if path.ends_with("/configmaps") {
        if query(&parts.uri, "watch").is_some() {
            return std::future::pending().await;
        }
        return json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
            "items": []})
        .to_string();
    }
    // `.../components/<name>` or, for the status subresource, `.../components/<name>/status`.
    let object_path = path.strip_suffix("/status").unwrap_or(&path);
    let name = object_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let watches = {
        let mut api = api.lock().unwrap();
        if parts.method == http::Method::PATCH {
            let patch: Value = serde_json::from_slice(&body).unwrap();
            let object = api.objects.get_mut(&name).unwrap();
            if let Some(finalizers) = patch["metadata"].get("finalizers") {
                object["metadata"]["finalizers"] = finalizers.clone();
            }
            // The producer records the job it issues: the whole status, as the writer writes it.
            if let Some(status) = patch.get("status") {
                object["status"] = status.clone();
            }
            return api.bump(&name).to_string();
        }
        if !path.ends_with("/components") {
            return api.objects[&name].to_string();
        }
        if query(&parts.uri, "watch").is_none() {
            api.requests.push("list".into());
            let items: Vec<Value> = api.objects.values().cloned().collect();
            return json!({"apiVersion": "deployment-orchestrator.io/v1alpha1",
                "kind": "ComponentList", "metadata": {"resourceVersion": api.version.to_string()},
                "items": items})
            .to_string();
        }
        let from = query(&parts.uri, "resourceVersion").unwrap_or_default();
        api.requests.push(format!("watch@{from}"));
        api.requests
            .iter()
            .filter(|r| r.starts_with("watch"))
            .count()
    };
    match watches {
        1 => {
            let mut api = api.lock().unwrap();
            let mut out = String::new();
            for (name, values) in [("late", json!({})), ("late-deep", nested(200))] {
                api.objects.insert(name.into(), object(name, values));
                out += &line("ADDED", &api.bump(name));
            }
            api.version += 1;
            let bookmark = json!({"kind": "Component", "apiVersion": "deployment-orchestrator.io/v1alpha1",
                "metadata": {"resourceVersion": api.version.to_string()}});
            out + &line("BOOKMARK", &bookmark)
        }
        2 => line(
            "ERROR",
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}),
        ),
        _ => std::future::pending().await,
    }
}

fn mock_api(api: Arc<Mutex<Api>>) -> kube::Client {
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let api = api.clone();
        async move {
            let body = answer(api, request).await;
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "default")
}

async fn stored<T>(
    js: &jetstream::Context,
    stream: &str,
    decode: fn(&[u8]) -> Option<T>,
) -> Vec<T> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.extend(decode(&m.payload));
        }
    }
    out
}

#[tokio::test]
async fn a_component_nested_200_deep_fails_alone_while_the_others_are_claimed_and_published() {
    let server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    Topology::default().ensure(&js).await.unwrap();
    let api = Arc::new(Mutex::new(Api::default()));
    {
        let mut api = api.lock().unwrap();
        for (name, values) in [
            ("a", json!({"x": 1})),
            ("deep", nested(200)),
            ("b", json!({})),
        ] {
            api.objects.insert(name.into(), object(name, values));
            api.bump(name);
        }
    }
    let metrics = Metrics::default();
    let watcher = Watcher::new(
        KubeComponentStore::new(mock_api(api.clone()), vec![]),
        JetStreamQueue::new(js.clone()),
        JetStreamStatus::new(js.clone()),
        WatcherConfig {
            resync_interval: Duration::from_millis(300),
            ..WatcherConfig::default()
        },
        metrics.clone(),
    );
    let token = CancellationToken::new();
    let running = tokio::spawn(watcher.run(token.clone()));

    let jobs = || stored(&js, JOBS_STREAM, |p| JobEvent::decode(p).ok());
    let statuses = || stored(&js, STATUS_STREAM, |p| StatusEvent::decode(p).ok());
    eventually(
        Duration::from_secs(15),
        "apply jobs for a, b and late",
        || async {
            let mut names: Vec<String> =
                jobs().await.into_iter().map(|j| j.component.name).collect();
            names.sort();
            names == ["a", "b", "late"]
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "deep and late-deep failed",
        || async {
            statuses()
                .await
                .iter()
                .filter(|e| e.phase == StatusPhase::Failed)
                .count()
                == 2
        },
    )
    .await;
    // Several resync passes later: each reported and failed once, nothing more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = statuses().await;
    for name in ["deep", "late-deep"] {
        let failed: Vec<&StatusEvent> = events
            .iter()
            .filter(|e| e.component.name == name && e.phase == StatusPhase::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "{name}: {events:?}");
        assert!(
            failed[0].message.contains("cannot be read")
                && failed[0].message.contains("recursion limit"),
            "{}",
            failed[0].message
        );
        assert_eq!(
            failed[0].component.uid.as_deref(),
            Some(helmq_tests::build::uid(name).as_str())
        );
    }
    assert_eq!(jobs().await.len(), 3);
    assert_eq!(metrics.unreadable_components.get(), 2);
    token.cancel();
    running.await.unwrap().unwrap();
    let published = jobs().await;
    let api = api.lock().unwrap();
    for name in ["a", "b", "late", "deep", "late-deep"] {
        assert_eq!(
            api.objects[name]["metadata"]["finalizers"],
            json!([HELM_FINALIZER]),
            "{name} claimed"
        );
    }
    // Each job, and each Failed event, answers the job recorded as issued in the status.
    for job in published {
        let issued = &api.objects[&job.component.name]["status"]["handlerStatus"]["issuedJob"];
        assert_eq!(issued["id"], json!(job.id), "{}", job.component.name);
    }
    for name in ["deep", "late-deep"] {
        let issued = &api.objects[name]["status"]["handlerStatus"]["issuedJob"];
        let failed = events
            .iter()
            .find(|e| e.component.name == name && e.phase == StatusPhase::Failed)
            .unwrap();
        assert_eq!(issued["id"], json!(failed.job_id), "{name}");
        assert_eq!(issued["action"], "apply", "{name}");
    }
    // Watch from the first list's version (3 objects), resume from the bookmark (after 3
    // claims, 3 issued jobs recorded and 2 objects: 12), and after the 410 from a fresh list's
    // (2 more claims and issued jobs: 16).
    let watches: Vec<&str> = api
        .requests
        .iter()
        .map(String::as_str)
        .filter(|r| r.starts_with("watch"))
        .collect();
    assert_eq!(
        watches,
        ["watch@3", "watch@12", "watch@16"],
        "{:?}",
        api.requests
    );
    assert_eq!(api.requests[0], "list");
}
