//! The cost of `HelmCli` per job: the real `helmq-worker` binary with one slot runs
//! `ctx.count(2000)` queued jobs with a `helm` stand-in that answers at once
//! (`bench/helm-stand-in`: `version`, `status` → not found, `upgrade` → deployed, `pull` → an
//! empty package), and `bench worker` (the same worker code, Helm in memory) runs as many.
//!
//! overhead per job = (real worker's time − in-memory worker's time) / jobs
//!                    − Σ over the Helm processes of one job of the stand-in's own run time,
//!
//! where the stand-in's own run time is the time to start it, let it answer and reap it from
//! a small process (this one), measured per subcommand. What is left is what `HelmCli` adds:
//! the values file, the chart cache, spawning from a large async process, reading the output.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Context;
use crate::child::Proc;
use crate::env::{CpuMeter, Env, job_timeline, publish_all};
use crate::jobs;
use crate::probe::Probe;
use crate::report::Report;
use crate::stats::round3;

/// The stand-in's log of calls, in `HELM_DATA_HOME`.
const CALLS_LOG: &str = "stand-in-calls.log";
/// Runs of the stand-in per subcommand to learn its own run time.
const STAND_IN_RUNS: usize = 200;
/// No job done for this long ends the phase with an error.
const STALL: Duration = Duration::from_secs(60);

/// Measures; returns the real worker's peak RSS in MiB.
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<f64> {
    let count = ctx.count(2_000);
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

    // The real binary with HelmCli and the stand-in, one slot.
    let helm_probe = queue(&env, 0xb, count).await?;
    let cache = scratch.path().join("cache");
    // HelmCli points HELM_DATA_HOME there; the stand-in logs its calls in it.
    let helm_log = cache.join("helm/data").join(CALLS_LOG);
    let mut args = super::worker_flags(&url, "helmcli-worker", 1);
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
    let mut worker = Proc::spawn(
        "helmcli-worker",
        &ctx.worker_bin,
        &args,
        &[],
        &ctx.log("helmcli-worker"),
    )?;
    env.wait_jobs(0, STALL, &mut [&mut worker]).await?;
    let helm_time = started.elapsed();
    worker.check_running()?;
    let rss = worker.peak_rss_mib();
    let cpu = meter.finish(worker.cpu());
    worker.stop(Duration::from_secs(10));

    let timeline = json!({
        "memory_worker": job_timeline(&env.js, &memory_probe, 0xa, count).await?,
        "helmcli_worker": job_timeline(&env.js, &helm_probe, 0xb, count).await?,
    });
    let calls = count_calls(&std::fs::read_to_string(&helm_log).unwrap_or_default());
    let total: usize = calls.values().sum();
    let mut own = BTreeMap::new();
    let mut own_per_job = Duration::ZERO;
    for (subcommand, n) in &calls {
        let time = stand_in_time(&ctx.helm_stand_in, subcommand, scratch.path())?;
        own_per_job += time.mul_f64(*n as f64 / count as f64);
        own.insert(subcommand.clone(), round3(time.as_secs_f64() * 1000.0));
    }
    let per_job = |d: Duration| d.as_secs_f64() * 1000.0 / count as f64;
    let overhead = per_job(helm_time) - per_job(memory_time) - own_per_job.as_secs_f64() * 1000.0;
    let processes = total as f64 / count as f64;

    report.set("helmcli_jobs", count);
    report.set("helmcli_ms_per_job", round3(per_job(helm_time)));
    report.set(
        "helmcli_memory_driver_ms_per_job",
        round3(per_job(memory_time)),
    );
    report.set("helmcli_stand_in_ms", json!(own));
    report.set("helmcli_overhead_ms", round3(overhead));
    report.set("helm_processes_per_apply", round3(processes));
    report.set("helm_processes_by_subcommand", json!(calls));
    report.set("helmcli_cpu", cpu);
    report.set("helmcli_job_timeline", timeline);
    report.row(
        &format!(
            "HelmCli overhead per job, 1 slot ({:.2} ms/job real worker, {:.2} in memory, stand-in {:.2})",
            per_job(helm_time),
            per_job(memory_time),
            own_per_job.as_secs_f64() * 1000.0
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

/// The stand-in's own mean run time for `subcommand`: started, answered and reaped from this
/// process, [`STAND_IN_RUNS`] times, with arguments like the worker's.
fn stand_in_time(stand_in: &Path, subcommand: &str, scratch: &Path) -> anyhow::Result<Duration> {
    let destination = scratch.join("pulls");
    std::fs::create_dir_all(&destination)?;
    let args: Vec<String> = match subcommand {
        "upgrade" => {
            "upgrade --install b-0 /tmp/nginx-1.2.3.tgz --namespace apps --version 1.2.3 \
                      --values /tmp/values.json --wait --timeout 300s -o json"
        }
        "status" => "status b-0 --namespace apps -o json",
        "pull" => "pull nginx --repo https://charts.example.com/stable --version 1.2.3",
        other => other,
    }
    .split_whitespace()
    .map(str::to_owned)
    .chain(
        (subcommand == "pull")
            .then(|| {
                [
                    "--destination".to_owned(),
                    destination.display().to_string(),
                ]
            })
            .into_iter()
            .flatten(),
    )
    .collect();
    let data_home = scratch.join("timing");
    std::fs::create_dir_all(&data_home)?;
    let started = Instant::now();
    for _ in 0..STAND_IN_RUNS {
        Command::new(stand_in)
            .args(&args)
            .env("HELM_DATA_HOME", &data_home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
    }
    Ok(started.elapsed() / STAND_IN_RUNS as u32)
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
