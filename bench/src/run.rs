//! One whole run: every phase in turn, then the figures that span phases (peak memory of
//! the processes, the machine), the table and `summary.json`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::Context;
use crate::phase;
use crate::report::Report;
use crate::stats::round3;

/// Runs every phase and returns the report (also written to `<out>/summary.json`).
pub async fn run(ctx: &Context) -> anyhow::Result<Report> {
    std::fs::create_dir_all(ctx.out_dir.join("logs"))?;
    let mut report = Report::default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let version = helmq_tests::binary_version(&ctx.nats_server).unwrap_or_default();
    let load = helmq_tests::procfs::load_average().unwrap_or(f64::NAN);
    report.set("nats_server_version", version.clone());
    report.set("cores", cores);
    report.set("load_average_1m_at_start", load);
    report.set("quick", ctx.quick);
    report.set("at", jiff::Timestamp::now().to_string());
    if let Some(commit) = git_commit() {
        report.set("commit", commit);
    }
    eprintln!(
        "bench: nats-server {version}, {cores} cores, load average {load:.2}{}",
        if ctx.quick {
            ", quick run (a tenth of the work: not for figures)"
        } else {
            ""
        }
    );

    eprintln!("bench: raw JetStream baseline");
    let raw = phase::raw::run(ctx, &mut report).await?;
    eprintln!("bench: pipeline throughput");
    let pipeline = phase::pipeline::throughput(ctx, &mut report).await?;
    let ratios = [
        (
            "pipeline_vs_raw_consume",
            "pipeline / raw consume+ack",
            raw.consume_per_s,
            Some(0.2),
        ),
        (
            "pipeline_vs_raw_same_protocol",
            "pipeline / raw with the pipeline's protocol",
            raw.consume_slots_per_s,
            None,
        ),
    ];
    for (key, figure, raw_rate, floor) in ratios {
        let ratio = pipeline / raw_rate;
        report.set(key, round3(ratio));
        report.row(
            figure,
            format!("{ratio:.3}"),
            &floor.map_or_else(String::new, |floor| format!(">= {floor}")),
            floor.map(|floor| ratio >= floor),
        );
    }
    eprintln!("bench: dispatch latency");
    phase::pipeline::latency(ctx, &mut report).await?;
    eprintln!("bench: fairness across tenants");
    phase::fairness::run(ctx, &mut report).await?;
    eprintln!("bench: NATS round trips per job");
    phase::round_trips::run(ctx, &mut report).await?;
    eprintln!("bench: scaling");
    let mut workers = phase::scaling::run(ctx, &mut report).await?;
    eprintln!("bench: HelmCli");
    let helm_worker = phase::helmcli::run(ctx, &mut report).await?;
    workers.insert(
        "helmcli-worker (helmq-worker binary)".into(),
        round3(helm_worker),
    );
    eprintln!("bench: memory with jobs queued");
    let memory = phase::memory::run(ctx, &mut report).await?;
    workers.insert("memory-worker".into(), round3(memory.worker));

    memory_rows(&mut report, &workers, memory);
    report.set("worker_peak_rss_mib_by_process", json!(workers));
    report.row("nats-server", version, "", None);
    report.row(
        "cores / load average at start",
        format!("{cores} / {load:.2}"),
        "",
        None,
    );
    report.write(&ctx.out_dir.join("summary.json"))?;
    Ok(report)
}

fn memory_rows(
    report: &mut Report,
    workers: &BTreeMap<String, f64>,
    memory: phase::memory::Memory,
) {
    let worker_peak = workers.values().copied().fold(0.0, f64::max);
    report.set("worker_peak_rss_mib", round3(worker_peak));
    report.set("producer_peak_rss_mib", round3(memory.producer));
    let (lightest, heaviest) = (
        workers.values().copied().fold(f64::INFINITY, f64::min),
        worker_peak,
    );
    report.row(
        &format!(
            "worker peak RSS, {} processes (MiB, lowest {lightest:.1})",
            workers.len()
        ),
        format!("{heaviest:.1}"),
        "<= 40",
        Some(heaviest <= 40.0),
    );
    report.row(
        &format!(
            "producer peak RSS (MiB; {:.1} with the jobs queued)",
            memory.producer_queued
        ),
        format!("{:.1}", memory.producer),
        "<= 64",
        Some(memory.producer <= 64.0),
    );
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(helmq_tests::workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
