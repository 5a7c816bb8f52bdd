//! Scaling over worker processes: Helm takes 200 ms per job (in memory, so the machine's CPU
//! is not the limit); 2,000 jobs through 1, 2 and 4 worker processes of 32 slots each. The
//! ideal wall time is jobs × 0.2 s / slots; efficiency is ideal / measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Context;
use crate::env::{CpuMeter, Env, job_timeline, publish_all};
use crate::jobs;
use crate::probe::Probe;
use crate::report::Report;
use crate::stats::round3;

/// Each apply's run time.
pub const APPLY_TIME: Duration = Duration::from_millis(200);
/// Slots per worker process.
pub const SLOTS: usize = 32;
/// Worker process counts.
pub const WORKERS: [usize; 3] = [1, 2, 4];

/// Runs the three scaling runs; returns the peak RSS (MiB) of every worker process.
pub async fn run(ctx: &Context, report: &mut Report) -> anyhow::Result<BTreeMap<String, f64>> {
    let count = ctx.count(2_000);
    let mut efficiency = BTreeMap::new();
    let mut walls = BTreeMap::new();
    let mut cpu = BTreeMap::new();
    let mut rss = BTreeMap::new();
    let mut timeline = BTreeMap::new();
    for workers in WORKERS {
        let env = Env::start(ctx, true).await?;
        let url = env.url();
        let mut procs = (0..workers)
            .map(|w| {
                let label = format!("scaling-{workers}-worker-{w}");
                super::bench_worker(ctx, &url, &label, SLOTS, APPLY_TIME)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        env.wait_idle_slots(workers * SLOTS, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{e} (logs: {})", ctx.log("scaling-*").display()))?;
        let run = u32::try_from(workers)?;
        let batch = (0..count)
            .map(|i| jobs::apply(i, jobs::uuid(run, i)))
            .collect();
        let probe = Probe::new(count);
        let meter = CpuMeter::start(env.server_pid());
        let started = Instant::now();
        publish_all(&env.js, batch, Some(&probe)).await?;
        let mut running: Vec<&mut crate::child::Proc> = procs.iter_mut().collect();
        env.wait_jobs(0, Duration::from_secs(60), &mut running)
            .await?;
        let wall = started.elapsed();
        for proc in &mut procs {
            proc.check_running()?;
            rss.insert(proc.label.clone(), round3(proc.peak_rss_mib()));
        }
        let children = procs.iter().map(|p| p.cpu()).sum();
        cpu.insert(workers.to_string(), meter.finish(children));
        for proc in &mut procs {
            proc.stop(Duration::from_secs(10));
        }
        timeline.insert(
            workers.to_string(),
            job_timeline(&env.js, &probe, run, count).await?,
        );
        let slots = workers * SLOTS;
        let ideal = APPLY_TIME.as_secs_f64() * count as f64 / slots as f64;
        let ratio = ideal / wall.as_secs_f64();
        efficiency.insert(workers.to_string(), round3(ratio));
        walls.insert(workers.to_string(), round3(wall.as_secs_f64()));
        report.row(
            &format!(
                "scaling {workers} worker(s) x {SLOTS}, {count} jobs x {} ms: efficiency (wall {:.2} s, ideal {ideal:.2} s)",
                APPLY_TIME.as_millis(),
                wall.as_secs_f64()
            ),
            format!("{ratio:.3}"),
            ">= 0.9",
            Some(ratio >= 0.9),
        );
    }
    report.set("scaling_jobs", count);
    report.set("scaling_slots_per_worker", SLOTS);
    report.set("scaling_apply_ms", APPLY_TIME.as_millis() as u64);
    report.set("scaling_efficiency", json!(efficiency));
    report.set("scaling_wall_s", json!(walls));
    report.set("scaling_cpu", json!(cpu));
    report.set("scaling_job_timeline", json!(timeline));
    Ok(rss)
}
