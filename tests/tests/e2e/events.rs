//! What operators see with `kubectl`: the Events the writer records on a Component through a
//! deploy → upgrade → fail → fail again → fix → delete sequence, as `kubectl describe component`
//! shows them (the repeated failure counted on one Event), and the wide columns of
//! `kubectl get components -o wide`.

use helmq_schemas::Phase;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{GONE_WITHIN, Stack, gate, kubectl, run_ok};

/// A finalizer of the test's own that keeps the deleted Component visible after helmq is done,
/// so that `kubectl describe` still shows its deletion Events.
const HOLD: &str = "e2e.helmq.test/hold";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn kubectl_describe_shows_the_events_of_deploy_upgrade_fail_fix_delete() {
    gate!();
    let stack = Stack::start("events").await;
    let ns = stack.cluster.namespace().to_owned();
    let name = "shown";

    stack
        .cluster
        .create(name, stack.charts.hello_config(name, "0.1.0", "one"))
        .await;
    stack.cluster.wait_phase(name, Phase::Ready, 1).await;
    stack
        .cluster
        .patch_config(name, stack.charts.hello_config(name, "0.2.0", "two"))
        .await;
    stack.cluster.wait_phase(name, Phase::Ready, 2).await;

    // `-o wide`: the release record and the last message.
    let wide = run_ok(
        &kubectl(),
        &["get", "components", name, "-n", &ns, "-o", "wide"],
    )
    .await;
    eprintln!("e2e[events]: kubectl get components -o wide:\n{wide}");
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "READY",
            "HANDLER",
            "AGE",
            "RELEASE",
            "REVISION",
            "CHART-VERSION",
            "MESSAGE",
            "SUSPENDED"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], [name, "Ready", "True", "helm"]);
    assert_eq!(row[5..8], [name, "2", "0.2.0"]);
    assert!(wide.contains("is deployed"), "{wide}");

    // The same missing version twice (two generations): one Failed Event, counted twice.
    for (generation, greeting) in [(3, "three"), (4, "four")] {
        stack
            .cluster
            .patch_config(name, stack.charts.hello_config(name, "9.9.9", greeting))
            .await;
        stack
            .cluster
            .wait_phase(name, Phase::Failed, generation)
            .await;
    }
    stack
        .cluster
        .patch_config(name, stack.charts.hello_config(name, "0.2.0", "fixed"))
        .await;
    stack.cluster.wait_phase(name, Phase::Ready, 5).await;

    // Deleted, held by our own finalizer once helmq is done: the deletion Events are there too.
    let hold = json!([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}]);
    run_ok(
        &kubectl(),
        &[
            "patch",
            "component",
            name,
            "-n",
            &ns,
            "--type",
            "json",
            "-p",
            &hold.to_string(),
        ],
    )
    .await;
    stack
        .cluster
        .components()
        .delete(name, &Default::default())
        .await
        .expect("delete");
    stack
        .cluster
        .wait_for(name, GONE_WITHIN, "uninstalled", |c| {
            c.is_some_and(|c| c.metadata.finalizers.iter().flatten().all(|f| f == HOLD))
        })
        .await;
    assert_eq!(stack.cluster.release_status(name, &ns).await, None);

    let recorded = stack.cluster.events(name).await;
    eprintln!("e2e[events]: events: {recorded:#?}");
    let count =
        |reason: &str| -> i32 { recorded.iter().filter(|e| e.0 == reason).map(|e| e.1).sum() };
    // Claimed once; Deploying and Ready per generation that got that far (identical notes
    // aggregate, so counted rather than listed); the two failures on one Event.
    assert_eq!(count("Claimed"), 1, "{recorded:#?}");
    assert_eq!(count("Deploying"), 5, "{recorded:#?}");
    assert_eq!(count("Ready"), 3, "{recorded:#?}");
    assert_eq!(count("Terminating"), 1, "{recorded:#?}");
    let failed: Vec<_> = recorded.iter().filter(|e| e.0 == "Failed").collect();
    assert_eq!(failed.len(), 1, "one Failed Event: {recorded:#?}");
    assert_eq!(failed[0].1, 2, "counted twice: {recorded:#?}");
    assert!(failed[0].2.contains("9.9.9"), "{recorded:#?}");

    let described = run_ok(&kubectl(), &["describe", "component", name, "-n", &ns]).await;
    eprintln!("e2e[events]: kubectl describe component:\n{described}");
    let events_section = described
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events section:\n{described}"));
    for reason in ["Claimed", "Deploying", "Ready", "Failed", "Terminating"] {
        assert!(
            events_section.contains(reason),
            "{reason} missing from:\n{events_section}"
        );
    }
    let failed_line = events_section
        .lines()
        .find(|l| l.contains("Failed"))
        .unwrap();
    assert!(failed_line.contains("Warning"), "{failed_line}");
    assert!(failed_line.contains("(x2 over"), "{failed_line}");
    assert!(failed_line.contains("helmq-producer"), "{failed_line}");

    stack
        .cluster
        .components()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the hold finalizer");
    stack
        .cluster
        .wait_for(name, GONE_WITHIN, "gone", |c| c.is_none())
        .await;
    stack.stop().await;
}
