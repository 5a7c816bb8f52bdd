//! The scale run (`HELMQ_E2E_SCALE=N`): N small Components (the `hello` chart, one ConfigMap,
//! no pods) created one after another against the real API server and helm, timed per
//! Component from its creation to the first time a watch sees it `Ready`. Reports
//! Components/s, p50/p99 create-to-Ready, helm processes per Component (every helm run goes
//! through the stack's counting wrapper) and each process's peak RSS, prints them and writes
//! them to `target/bench/e2e-scale.json` (and `rig-scale-N.json`). The figures are
//! measurements, not assertions.
//!
//! With `HELMQ_E2E_SCALE_BARE=1` (`just bench-rig`, CI) the run times N bare
//! `helm upgrade --install --wait` runs of the same chart package, values and namespace with the
//! workers' parallelism (workers × `--concurrency`) before helmq's Components and again after
//! them: the physical limit, which helmq's time is reported against (`ratio_to_bare_helm`, to
//! the mean of the two, so that a cluster slowing down over the run favours neither side).
//! Each timed phase also records the CPU seconds every part of the machine used in it
//! (`cpu_seconds`): the rig's processes, helmq's (and apart, the Helm runs they waited for),
//! the bare phase's helm runs, and the machine as a whole; and the requests the API server and
//! etcd served per Component (`api_requests_per_component`, from the API server's `/metrics`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use helmq_schemas::{Component, Phase};
use helmq_tests::procfs::{children_cpu_time, cpu_time, machine_busy};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

use crate::support::{Options, Stack, binary, gate, phase};

const WORKERS: usize = 2;
/// Jobs each worker runs at once; the bare phase runs `WORKERS * CONCURRENCY` helm processes at
/// a time.
const CONCURRENCY: usize = 4;
/// The run fails when no Component got further (Ready, or gone after delete) for this long; it is
/// not a time limit on the whole run, whose length depends on the machine.
const STALL: Duration = Duration::from_secs(120);

/// Waits until `remaining()` reaches 0, failing only when it stops going down for [`STALL`].
async fn until_done<F, Fut>(what: &str, mut remaining: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut last = usize::MAX;
    let mut moved = Instant::now();
    loop {
        let left = remaining().await;
        if left == 0 {
            return;
        }
        if left < last {
            last = left;
            moved = Instant::now();
        }
        assert!(
            moved.elapsed() < STALL,
            "{what}: {left} left, none for {STALL:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Helm runs per Component, by subcommand and in total.
fn per_component(counts: &BTreeMap<String, usize>, components: usize) -> Value {
    let total: usize = counts.values().sum();
    let by: BTreeMap<&String, f64> = counts
        .iter()
        .map(|(k, v)| (k, *v as f64 / components as f64))
        .collect();
    json!({"total": total as f64 / components as f64, "by_subcommand": by, "runs": total})
}

fn subtract(
    after: &BTreeMap<String, usize>,
    before: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The key of the whole machine's busy time in a [`cpu_sample`].
const MACHINE: &str = "machine";

/// CPU time used so far by each part of the machine: the rig's processes (`$HELMQ_RIG/run/*.pid`),
/// the stack's (and apart, the children they waited for: a worker's Helm runs), this test
/// process and its children (the bare phase's helm runs), and the machine as a whole.
fn cpu_sample(stack: &Stack) -> BTreeMap<String, Duration> {
    let mut sample = BTreeMap::new();
    let rig = std::env::var_os("HELMQ_RIG").map(|rig| Path::new(&rig).join("run"));
    for path in rig
        .and_then(|run| std::fs::read_dir(run).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "pid"))
    {
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|pid| pid.trim().parse().ok());
        let name = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned);
        if let (Some(pid), Some(name)) = (pid, name) {
            sample.insert(name, cpu_time(pid).unwrap_or_default());
        }
    }
    sample.extend(stack.processes.cpu_times());
    if let Some(pid) = stack.queue.nats_pid() {
        sample.insert("nats-server".into(), cpu_time(pid).unwrap_or_default());
    }
    let me = std::process::id();
    sample.insert("e2e test".into(), cpu_time(me).unwrap_or_default());
    sample.insert(
        "bare helm runs".into(),
        children_cpu_time(me).unwrap_or_default(),
    );
    sample.insert(MACHINE.into(), machine_busy().unwrap_or_default());
    sample
}

/// CPU seconds of each part between two samples (to 0.1 s), and `other`: the machine's less
/// the parts'.
fn cpu_used(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = after
        .iter()
        .map(|(name, at)| {
            let from = before.get(name).copied().unwrap_or_default();
            (name.clone(), at.saturating_sub(from).as_secs_f64())
        })
        .collect();
    let parts: f64 = used
        .iter()
        .filter(|(n, _)| *n != MACHINE)
        .map(|(_, s)| s)
        .sum();
    let machine = used.get(MACHINE).copied().unwrap_or(0.0);
    used.insert("other".into(), (machine - parts).max(0.0));
    used.values_mut()
        .for_each(|s| *s = (*s * 10.0).round() / 10.0);
    used
}

/// The API server's requests served so far, by `VERB resource[/subresource]` (with the code
/// appended for answers other than 2xx), and etcd's by `etcd OPERATION type`, from its `/metrics`; empty when it cannot be read.
async fn api_sample(stack: &Stack) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    let Ok(text) = stack.cluster.client().request_text(request).await else {
        return BTreeMap::new();
    };
    let mut sample = BTreeMap::new();
    for line in text.lines() {
        let (name, rest) = line.split_once('{').unwrap_or(("", ""));
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or_default()
        };
        let key = match name {
            "apiserver_request_total" => {
                let (resource, sub) = (label("resource"), label("subresource"));
                let resource = if sub.is_empty() {
                    resource.to_owned()
                } else {
                    format!("{resource}/{sub}")
                };
                // Answers other than 2xx apart (a 409 is a write that lost a race).
                match label("code") {
                    code if code.starts_with('2') => format!("{} {resource}", label("verb")),
                    code => format!("{} {resource} {code}", label("verb")),
                }
            }
            "etcd_requests_total" => format!("etcd {} {}", label("operation"), label("type")),
            _ => continue,
        };
        if let Ok(value) = value.trim().parse::<f64>() {
            *sample.entry(key).or_default() += value;
        }
    }
    sample
}

/// Requests per Component between two [`api_sample`]s (to 0.01), the ones of at least 0.01
/// per Component; `total` sums the API server's (etcd's aside).
fn api_used(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    count: usize,
) -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = after
        .iter()
        .map(|(key, n)| {
            let per = (n - before.get(key).copied().unwrap_or(0.0)) / count as f64;
            (key.clone(), (per * 100.0).round() / 100.0)
        })
        .filter(|(_, per)| *per >= 0.01)
        .collect();
    let total = used
        .iter()
        .filter(|(key, _)| !key.starts_with("etcd "))
        .map(|(_, n)| n)
        .sum::<f64>();
    used.insert("total".into(), (total * 100.0).round() / 100.0);
    used
}

/// `count` bare `helm upgrade --install --wait` runs of `package` with the values the
/// Components use, `parallel` at a time, in the stack's namespace; returns the seconds they
/// took and the CPU each part of the machine used meanwhile. The releases are uninstalled
/// afterwards (not timed).
async fn bare_helm(
    stack: &Stack,
    package: &std::path::Path,
    count: usize,
    parallel: usize,
) -> Timed {
    let values = tempfile::NamedTempFile::new().expect("values file");
    let config = stack.charts.hello_config("bare", "0.1.0", "scale");
    std::fs::write(values.path(), config["values"].to_string()).expect("write the values");
    let (helm, namespace) = (stack.cluster.helm(), stack.cluster.namespace());
    let (package, values) = (
        package.to_str().expect("utf-8 path"),
        values.path().to_str().expect("utf-8 path"),
    );
    let each = |verb: &'static [&'static str]| {
        futures::stream::iter(0..count)
            .map(move |i| async move {
                let name = format!("bare-{i}");
                let mut args: Vec<&str> = verb.to_vec();
                args.push(&name);
                if verb[0] == "upgrade" {
                    args.extend([package, "--values", values, "-o", "json"]);
                }
                args.extend(["--namespace", namespace, "--wait", "--timeout", "300s"]);
                crate::support::run_ok(helm, &args).await;
            })
            .buffer_unordered(parallel)
            .collect::<Vec<()>>()
    };
    let api_before = api_sample(stack).await;
    let (started, cpu_before) = (Instant::now(), cpu_sample(stack));
    each(&["upgrade", "--install"]).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_used(&cpu_before, &cpu_sample(stack));
    let api = api_used(&api_before, &api_sample(stack).await, count);
    each(&["uninstall"]).await;
    Timed { seconds, cpu, api }
}

/// What a timed phase took: seconds, the CPU seconds of each part of the machine, and the API
/// server's and etcd's requests per Component.
struct Timed {
    seconds: f64,
    cpu: BTreeMap<String, f64>,
    api: BTreeMap<String, f64>,
}

/// [`bare_helm`] with the workers' parallelism, printed as the bare run `when` (before or
/// after helmq's).
async fn timed_bare_helm(stack: &Stack, count: usize, when: &str) -> Timed {
    let package = stack.charts.chart_package("hello", "0.1.0");
    let phase = bare_helm(stack, &package, count, WORKERS * CONCURRENCY).await;
    println!(
        "e2e scale: {count} bare helm upgrade --install --wait runs {when} helmq's, {} at a time: {:.1}s ({:.2}/s)",
        WORKERS * CONCURRENCY,
        phase.seconds,
        count as f64 / phase.seconds
    );
    println!("e2e scale: CPU seconds, bare helm {when}: {:?}", phase.cpu);
    println!(
        "e2e scale: API requests per Component, bare helm {when}: {:?}",
        phase.api
    );
    phase
}

/// Components of a run without HELMQ_E2E_SCALE.
const DEFAULT_COUNT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "end-to-end: needs a cluster and helm; `just e2e` runs it (with HELMQ_E2E=1)"]
async fn scale_many_small_components() {
    gate!();
    // Never a pass that did nothing: without HELMQ_E2E_SCALE a small run still checks that
    // many Components converge (CI sets 200 and times them).
    let count = std::env::var("HELMQ_E2E_SCALE")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_COUNT);
    let stack = Stack::start_with(Options {
        workers: WORKERS,
        worker_args: vec!["--concurrency".into(), CONCURRENCY.to_string()],
        ..Options::new("scale")
    })
    .await;
    let api = stack.cluster.components();
    let bare = std::env::var("HELMQ_E2E_SCALE_BARE").is_ok_and(|v| v == "1");
    let bare_before = if bare {
        Some(timed_bare_helm(&stack, count, "before").await)
    } else {
        None
    };

    // First sight of Ready per Component, from a watch started before the first create.
    let ready_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = ready_at.clone();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(async move {
        let mut synced = Some(synced_tx);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    let c: Component = c;
                    if phase(Some(&c)) == Some(Phase::Ready) {
                        let name = c.metadata.name.unwrap_or_default();
                        seen.lock()
                            .unwrap()
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
                _ => {}
            }
        }
    });
    synced_rx.await.expect("the watch started");

    let mut created_at = HashMap::new();
    let api_before = api_sample(&stack).await;
    let (started, cpu_before) = (Instant::now(), cpu_sample(&stack));
    for i in 0..count {
        let name = format!("scale-{i}");
        created_at.insert(name.clone(), Instant::now());
        stack
            .cluster
            .create(&name, stack.charts.hello_config(&name, "0.1.0", "scale"))
            .await;
    }
    until_done("not Ready", || {
        let left = count - ready_at.lock().unwrap().len();
        async move { left }
    })
    .await;
    let helmq_cpu = cpu_used(&cpu_before, &cpu_sample(&stack));
    let helmq_api = api_used(&api_before, &api_sample(&stack).await, count);
    println!("e2e scale: CPU seconds, helmq: {helmq_cpu:?}");
    println!("e2e scale: API requests per Component, helmq: {helmq_api:?}");
    let ready_at = ready_at.lock().unwrap().clone();
    let last_ready = ready_at.values().max().copied().unwrap_or(started);
    let elapsed = last_ready.duration_since(started).as_secs_f64();
    let mut latencies: Vec<f64> = ready_at
        .iter()
        .map(|(name, at)| at.duration_since(created_at[name]).as_secs_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let deploy_calls = stack.processes.helm_call_counts();

    // Delete them all: the workers uninstall and the writer removes the finalizers.
    let names: Vec<String> = created_at.keys().cloned().collect();
    let delete_started = Instant::now();
    for name in &names {
        stack
            .cluster
            .components()
            .delete(name, &Default::default())
            .await
            .expect("delete");
    }
    until_done("not deleted", || async {
        stack
            .cluster
            .components()
            .list(&Default::default())
            .await
            .expect("list Components")
            .items
            .len()
    })
    .await;
    let delete_seconds = delete_started.elapsed().as_secs_f64();
    // Bare helm again once helmq is done: the API server and etcd can grow slower as a run goes
    // on (history, Events, compaction), so helmq is measured against the mean of bare helm
    // before and after it rather than against a fresher cluster alone.
    let bare_after = if bare {
        Some(timed_bare_helm(&stack, count, "after").await)
    } else {
        None
    };
    let bare_seconds = bare_before
        .as_ref()
        .zip(bare_after.as_ref())
        .map(|(before, after)| (before.seconds + after.seconds) / 2.0);
    watch.abort();
    let delete_calls = subtract(&stack.processes.helm_call_counts(), &deploy_calls);
    let peaks = stack.peak_rss();
    let helm_version = crate::support::run_ok(stack.cluster.helm(), &["version", "--short"]).await;
    let kube_version = stack
        .cluster
        .client()
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    stack.stop().await;

    let applies: usize = deploy_calls
        .iter()
        .filter(|(subcommand, _)| *subcommand != "pull")
        .map(|(_, n)| n)
        .sum();
    let report = json!({
        "components": count,
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "bare_helm_seconds": bare_seconds,
        "bare_helm_seconds_before_and_after": [
            bare_before.as_ref().map(|p| p.seconds),
            bare_after.as_ref().map(|p| p.seconds)
        ],
        "ratio_to_bare_helm": bare_seconds.map(|bare| elapsed / bare),
        "helm_processes_per_apply": applies as f64 / count as f64,
        "helm": helm_version.trim(),
        "kubernetes": kube_version,
        "seconds_to_all_ready": elapsed,
        "components_per_second": count as f64 / elapsed,
        "create_to_ready_seconds": {
            "p50": quantile(&latencies, 0.50),
            "p99": quantile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(0.0),
        },
        "helm_processes_per_component": {
            "deploy": per_component(&deploy_calls, count),
            "delete": per_component(&delete_calls, count),
        },
        "seconds_to_all_deleted": delete_seconds,
        "cpu_seconds": {
            "bare_helm_before": bare_before.as_ref().map(|p| &p.cpu),
            "helmq": helmq_cpu,
            "bare_helm_after": bare_after.as_ref().map(|p| &p.cpu),
        },
        "api_requests_per_component": {
            "bare_helm_before": bare_before.as_ref().map(|p| &p.api),
            "helmq": helmq_api,
            "bare_helm_after": bare_after.as_ref().map(|p| &p.api),
        },
        "peak_rss_mib": peaks
            .iter()
            .map(|(name, kib)| (name.clone(), json!((*kib as f64 / 1024.0 * 10.0).round() / 10.0)))
            .collect::<serde_json::Map<_, _>>(),
    });
    println!(
        "e2e scale: {count} Components Ready in {elapsed:.1}s ({:.2}/s); create-to-Ready p50 {:.1}s p99 {:.1}s",
        report["components_per_second"].as_f64().unwrap_or(0.0),
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99)
    );
    if let Some(bare) = bare_seconds {
        println!(
            "e2e scale: helmq {elapsed:.1}s / bare helm {bare:.1}s (the mean of before and after) = {:.2}x ({} build)",
            elapsed / bare,
            report["build"].as_str().unwrap_or_default()
        );
    }
    println!(
        "e2e scale: helm processes per apply (chart pulls aside) {:.2}; per Component: deploy {} delete {}",
        report["helm_processes_per_apply"].as_f64().unwrap_or(0.0),
        report["helm_processes_per_component"]["deploy"],
        report["helm_processes_per_component"]["delete"]
    );
    for (name, kib) in &peaks {
        println!("e2e scale: peak RSS {name} {:.1} MiB", *kib as f64 / 1024.0);
    }
    // target/<profile>/helmq-worker → target/bench/
    let bench = binary("helmq-worker")
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("bench");
    std::fs::create_dir_all(&bench).expect("create target/bench");
    for name in [
        "e2e-scale.json".to_owned(),
        format!("rig-scale-{count}.json"),
    ] {
        let path = bench.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap())
            .expect("write the report");
        println!("e2e scale: written to {}", path.display());
    }
}
