//! A worker killed with its helm child while helm waits (as the OOM killer or a lost node does):
//! Helm leaves the release `pending-upgrade`; the job comes back after the consumer's
//! `ack_wait`, the dead worker's release lease expires, and another worker recovers the release
//! (rollback to the last good revision, then the upgrade again) with no one touching helm.

use std::time::{Duration, Instant};

use helmq_queue::Topology;
use helmq_schemas::Phase;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::support::{Options, Stack, gate, process_tree, spec};
use helmq_tests::procfs::is_alive;

/// Redelivery after a crash and lease expiry both take this long: short, to keep the case fast.
const ACK_WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn a_worker_killed_with_helm_mid_wait_leaves_a_pending_release_that_another_worker_recovers()
{
    gate!();
    let mut stack = Stack::start_with(Options {
        workers: 1,
        // The lease lives ACK_WAIT: a cancelled helm gets a second of it.
        worker_args: ["--helm-grace", "1s"].map(str::to_owned).to_vec(),
        charts: vec!["webapp"],
        topology: Some(Topology {
            ack_wait: ACK_WAIT,
            lease_ttl: ACK_WAIT,
            ..Topology::default()
        }),
        ..Options::new("crash")
    })
    .await;
    let ns = stack.cluster.namespace().to_owned();
    let client = stack.cluster.client().clone();

    // A quota of one pod: revision 1 (one replica) fits, the upgrade to two replicas waits for
    // a pod the quota refuses, on any cluster, until the quota goes.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "one-pod"},
                "spec": {"hard": {"pods": "1"}}
            }))
            .unwrap(),
        )
        .await
        .expect("create the quota");
    // Admission counts against the quota only once the quota controller has filled in usage.
    let deadline = Instant::now() + Duration::from_secs(30);
    while quotas
        .get("one-pod")
        .await
        .unwrap()
        .status
        .and_then(|s| s.used)
        .is_none()
    {
        assert!(Instant::now() < deadline, "quota usage never computed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let config = |replicas: i64| {
        stack.charts.chart_config(
            "webapp",
            "0.1.0",
            "web",
            &ns,
            false,
            json!({"replicaCount": replicas}),
        )
    };
    let mut component = spec("web", config(1));
    component.deployment_timeout = Some("5m".into());
    stack.cluster.create_spec("web", component).await;
    stack.cluster.wait_phase("web", Phase::Ready, 1).await;

    // The upgrade: helm waits for the second pod.
    stack.cluster.patch_config("web", config(2)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack.cluster.release_status("web", &ns).await.as_deref() != Some("pending-upgrade") {
        assert!(Instant::now() < deadline, "the upgrade never started");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let worker_pid = stack.processes.pid("helmq-worker-1");
    let tree = process_tree(worker_pid);
    assert!(
        tree.iter().any(|(_, cmd)| cmd.contains("upgrade")),
        "no helm upgrade running under the worker: {tree:?}"
    );

    // SIGKILL the worker and its helm child at once.
    stack.processes.kill_tree("helmq-worker-1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<_> = tree.iter().filter(|(pid, _)| is_alive(*pid)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still alive after SIGKILL: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.cluster.release_status("web", &ns).await.as_deref(),
        Some("pending-upgrade"),
        "a killed helm leaves the release pending"
    );
    // The fence: the pending record carries the lease revision its run held (issue 19), which
    // recovery compares with the lease the next worker holds.
    let records: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pending = records
        .get("sh.helm.release.v1.web.v2")
        .await
        .expect("the pending record's Secret");
    let stamp = pending
        .metadata
        .labels
        .unwrap_or_default()
        .get("helmq.io/lease-revision")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        stamp.is_some(),
        "the pending record is stamped with a lease revision"
    );

    let killed_at = Instant::now();

    // The obstacle goes; no one touches the release. Another worker gets the job back.
    quotas
        .delete("one-pod", &DeleteParams::default())
        .await
        .expect("delete the quota");
    stack.processes.start_worker();
    let ready = stack.cluster.wait_phase("web", Phase::Ready, 2).await;
    let status = ready.status.unwrap();
    let message = status.message.unwrap_or_default();
    eprintln!("e2e[crash]: Ready: {message}");
    assert!(
        message
            .contains("recovered release web from pending-upgrade by rolling back to revision 1"),
        "{message}"
    );
    // Told as a Kubernetes Event too, before the Ready one.
    let recovered = stack.cluster.wait_event("web", "Recovered").await;
    assert_eq!(
        recovered,
        "recovered release web from pending-upgrade by rolling back to revision 1"
    );
    let last = stack
        .cluster
        .helm_json(&["history", "web", "-n", &ns])
        .await
        .and_then(|h| h.as_array().and_then(|h| h.last()).cloned())
        .expect("helm history");
    assert_eq!(last["status"], "deployed");
    assert_eq!(
        status.handler_status.unwrap().revision,
        last["revision"].as_i64()
    );
    let events = stack.queue.status_events("web").await;
    assert!(
        events
            .iter()
            .any(|e| e.component.generation == 2 && e.worker.ends_with("-2") && e.attempt >= 2),
        "the second worker ran a redelivery of the job: {:?}",
        events
            .iter()
            .map(|e| (e.component.generation, e.phase, &e.worker, e.attempt))
            .collect::<Vec<_>>()
    );
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let deployment = deployments.get("web-webapp").await.unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(2));

    let recovered = killed_at.elapsed();

    stack.cluster.delete_and_wait_gone("web").await;
    stack.stop().await;
    // The fault suite's row 09 (docs/RELIABILITY.md), written only when the case passed.
    helmq_tests::faults::write_row(&helmq_tests::faults::Row {
        scenario: 9,
        name: "Crash during `--wait` on a real cluster".into(),
        injected: "SIGKILL of a worker and its helm child while `helm upgrade --wait` waits on a Deployment (real kube-apiserver and Helm); release left pending-upgrade".into(),
        jobs: 3,
        releases: 1,
        lost: 0,
        overlapping_runs: 0,
        duplicated_runs: 1,
        duplicated_why: "the killed upgrade, run again by another worker after a rollback to revision 1".into(),
        recovery: format!("Ready {:.0} s after the kill (ack_wait and lease TTL {} s)", recovered.as_secs_f64(), ACK_WAIT.as_secs()),
        test: "e2e::crash::a_worker_killed_with_helm_mid_wait_leaves_a_pending_release_that_another_worker_recovers".into(),
        ..Default::default()
    });
}
