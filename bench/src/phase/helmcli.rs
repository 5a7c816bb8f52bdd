//! The cost of `HelmCli` per job, as whole-path time: the real `helmq-worker` binary with one
//! slot runs `ctx.count(100)` queued jobs with a `helm` stand-in (`bench/helm-stand-in`:
//! `version`, `status` → not found, `install`/`upgrade` → deployed, `pull` → an empty package)
//! that takes [`HELM_START`] per process, what a real helm start costs; `bench worker` (the same
//! worker code, Helm in memory) runs as many.
//!
//! overhead per job = real worker's time per job − in-memory worker's time per job
//!                    − start × (1 + charts / jobs)
//!
//! where `start` is what one stand-in process costs here (its [`HELM_START`] and its shell,
//! measured), once for the one Helm process an apply cannot do without and once per chart for
//! its pull into the cache. Every further process a job starts shows in the overhead at its
//! full cost, next to the values file, the chart cache and spawning from a large async process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Context;
use crate::env::{CpuMeter, Env, job_timeline, publish_all};
use crate::jobs;
use crate::probe::Probe;
use crate::report::Report;
use crate::stats::round3;

/// The stand-in's log of calls, in `HELM_DATA_HOME`.
const CALLS_LOG: &str = "stand-in-calls.log";
/// What the stand-in takes per process: a real helm start. On the rig, `helm status` of a
/// release took 0.27 s and a refused `helm install` 0.46 s (Helm 4 reads its configuration and
/// the API server's discovery before any action).
pub const HELM_START: Duration = Duration::from_millis(250);
/// The stand-in's cost per process, read from `HELM_DATA_HOME` (helm starts from a cleared
/// environment).
const START_FILE: &str = "stand-in-start-ms";
/// No job done for this long ends the phase with an error.
const STALL: Duration = Duration::from_secs(60);

/// Measures; returns the real worker's peak RSS in MiB.
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<f64> {
    let count = ctx.count(100);
    let env = Env::start(ctx, true).await?;
    let url = env.url();
    let scratch = tempfile::Builder::new()
        .prefix("helmcli-")
        .tempdir_in(&ctx.out_dir)?;

    // The worker's own cost per job with Helm in memory, one slot.
    let memory_probe = queue(&env, 0xa, count).await?;
    let started = Instant::now();
    let mut memory = super::bench_worker(ctx, &url, "helmcli-memory-worker", 1, Duration::ZERO)?;
    env.wait_jobs(0, STALL, &mut [&mut memory]).await?;
    let memory_time = started.elapsed();
    memory.check_running()?;
    memory.stop(Duration::from_secs(10));

    // The real binary with HelmCli and the stand-in, one slot, on a server of its own: the
    // first run's jobs were other Components naming the same releases, whose owner records
    // would make every job read its release first.
    let helm_env = Env::start(ctx, true).await?;
    let helm = helmcli_worker(ctx, &helm_env, &helm_env.url(), scratch.path(), count).await?;
    let (helm_probe, helm_time, rss, cpu) = (helm.probe, helm.time, helm.rss, helm.cpu);

    let timeline = json!({
        "memory_worker": job_timeline(&env.js, &memory_probe, 0xa, count).await?,
        "helmcli_worker": job_timeline(&helm_env.js, &helm_probe, 0xb, count).await?,
    });
    let calls = count_calls(&std::fs::read_to_string(&helm.calls_log).unwrap_or_default());
    let total: usize = calls.values().sum();
    let per_job = |d: Duration| d.as_secs_f64() * 1000.0 / count as f64;
    let start_ms = stand_in_cost(&ctx.helm_stand_in, scratch.path())?.as_secs_f64() * 1000.0;
    // Every bench job installs the same chart: one pull into the cache.
    let charts = 1.0;
    let overhead =
        per_job(helm_time) - per_job(memory_time) - start_ms * (1.0 + charts / count as f64);
    let processes = total as f64 / count as f64;

    report.set("helmcli_jobs", count);
    report.set("helmcli_ms_per_job", round3(per_job(helm_time)));
    report.set(
        "helmcli_memory_driver_ms_per_job",
        round3(per_job(memory_time)),
    );
    report.set("helmcli_helm_start_ms", round3(start_ms));
    report.set("helmcli_overhead_ms", round3(overhead));
    report.set("helm_processes_per_apply", round3(processes));
    report.set("helm_processes_by_subcommand", json!(calls));
    report.set("helmcli_cpu", cpu);
    report.set("helmcli_job_timeline", timeline);
    report.row(
        &format!(
            "HelmCli overhead per job, 1 slot ({:.2} ms/job real worker, {:.2} in memory, one stand-in process {start_ms:.1})",
            per_job(helm_time),
            per_job(memory_time),
        ),
        format!("{overhead:.2} ms"),
        "<= 5 ms",
        Some(overhead <= 5.0),
    );
    let by = calls
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    report.row(
        &format!("Helm processes per apply ({by})"),
        format!("{processes:.3}"),
        "1",
        Some(processes <= 1.0 + 1.0 / count as f64),
    );
    Ok(rss)
}

/// What the real worker's run with HelmCli and the stand-in measured.
struct HelmcliRun {
    probe: Probe,
    time: Duration,
    rss: f64,
    cpu: serde_json::Value,
    /// Where the stand-in logged its calls.
    calls_log: std::path::PathBuf,
}

/// What one stand-in process costs, started and reaped from this process: its
/// [`HELM_START`] and its shell. The mean of a few runs of `helm version`.
fn stand_in_cost(
    stand_in: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<Duration> {
    const RUNS: u32 = 8;
    let data = scratch.join("cost");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join(START_FILE), HELM_START.as_millis().to_string())?;
    let started = Instant::now();
    for _ in 0..RUNS {
        std::process::Command::new(stand_in)
            .arg("version")
            .env("HELM_DATA_HOME", &data)
            .stdout(std::process::Stdio::null())
            .status()?;
    }
    Ok(started.elapsed() / RUNS)
}

/// Queues `count` jobs (batch 0xb) and runs them on the real worker binary, one slot, with
/// HelmCli calling the stand-in; its cache under `scratch`.
async fn helmcli_worker(
    ctx: &Context,
    env: &Env,
    url: &str,
    scratch: &std::path::Path,
    count: usize,
) -> anyhow::Result<HelmcliRun> {
    let probe = queue(env, 0xb, count).await?;
    let cache = scratch.join("cache");
    // HelmCli points HELM_DATA_HOME there; the stand-in logs its calls in it.
    let data = cache.join("helm/data");
    let calls_log = data.join(CALLS_LOG);
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join(START_FILE), HELM_START.as_millis().to_string())?;
    let mut args = super::worker_flags(url, "helmcli-worker", 1);
    args.extend([
        "--helm-bin".to_owned(),
        ctx.helm_stand_in.display().to_string(),
        "--kubectl-bin".to_owned(),
        String::new(),
        "--cache-dir".to_owned(),
        cache.display().to_string(),
    ]);
    let meter = CpuMeter::start(env.server_pid());
    let started = Instant::now();
    let mut worker = ctx.spawn("helmcli-worker", &ctx.worker_bin, &args)?;
    env.wait_jobs(0, STALL, &mut [&mut worker]).await?;
    let time = started.elapsed();
    worker.check_running()?;
    let rss = worker.peak_rss_mib();
    let cpu = meter.finish(worker.cpu());
    worker.stop(Duration::from_secs(10));
    Ok(HelmcliRun {
        probe,
        time,
        rss,
        cpu,
        calls_log,
    })
}

/// Queues `count` jobs of batch `run` (no worker is running yet); their publish times are in
/// the probe.
async fn queue(env: &Env, run: u32, count: usize) -> anyhow::Result<Probe> {
    let batch = (0..count)
        .map(|i| jobs::apply(i, jobs::uuid(run, i)))
        .collect();
    let probe = Probe::new(count);
    publish_all(&env.js, batch, Some(&probe)).await?;
    env.wait_jobs(count as u64, STALL, &mut []).await?;
    Ok(probe)
}

/// Invocations per subcommand in the stand-in's log (one subcommand a line).
pub fn count_calls(log: &str) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for line in log.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *calls.entry(line.to_owned()).or_default() += 1;
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_by_subcommand() {
        let calls = count_calls("status\nupgrade\nstatus\n\npull\n");
        assert_eq!(
            calls.into_iter().collect::<Vec<_>>(),
            [
                ("pull".into(), 1),
                ("status".into(), 2),
                ("upgrade".into(), 1)
            ]
        );
    }
}
