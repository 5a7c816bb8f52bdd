//! Processes the bench starts and measures: the real `helmq-worker` binary, and this binary
//! re-run as a worker or a producer (`bench worker`, `bench producer`) where Helm or the
//! Kubernetes API must be in memory. Those run the same entry points as the real binaries
//! (`helmq_worker::run`, `helmq_producer::run`, with the same flags); only the driver or the
//! store differs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore, FakeLeaseStore};
use helmq_queue::Connection;
use helmq_schemas::component::parse_duration_flag;
use tokio_util::sync::CancellationToken;

use crate::driver::BenchDriver;
use crate::jobs;

/// `bench worker`: `helmq-worker` with Helm in memory ([`BenchDriver`]).
#[derive(Debug, Parser)]
pub struct WorkerArgs {
    /// The worker's own flags.
    #[command(flatten)]
    pub worker: helmq_worker::Args,
    /// How long each apply takes (default: no time at all).
    #[arg(long, value_parser = parse_duration_flag)]
    pub apply_time: Option<Duration>,
}

/// `bench producer`: `helmq-producer` over the in-memory API server, holding `--components`
/// Components (`bench/b-<i>`) from the start.
#[derive(Debug, Parser)]
pub struct ProducerArgs {
    /// The producer's own flags.
    #[command(flatten)]
    pub producer: helmq_producer::Args,
    /// Components in the in-memory API server.
    #[arg(long, default_value_t = 0)]
    pub components: usize,
}

/// Runs a worker with [`BenchDriver`] until SIGTERM.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    helmq_telemetry::init_tracing(&args.worker.service.log);
    let shutdown = CancellationToken::new();
    helmq_telemetry::cancel_on_signals(shutdown.clone());
    let driver = BenchDriver::new(args.apply_time.unwrap_or_default());
    helmq_worker::run(args.worker, driver, shutdown).await?;
    Ok(())
}

/// Runs a producer over the in-memory API server until SIGTERM.
pub async fn producer(args: ProducerArgs) -> anyhow::Result<()> {
    helmq_telemetry::init_tracing(&args.producer.service.log);
    let shutdown = CancellationToken::new();
    helmq_telemetry::cancel_on_signals(shutdown.clone());
    let store = FakeComponentStore::new();
    for index in 0..args.components {
        store.create(jobs::component(index))?;
    }
    let nats = Connection::open(&args.producer.service.nats, "helmq-producer").await?;
    let result = helmq_producer::run(
        &args.producer,
        store,
        FakeLeaseStore::new(),
        FakeEventStore::new(),
        nats.jetstream(),
        shutdown,
    )
    .await;
    nats.drain(args.producer.drain_deadline).await;
    Ok(result?)
}

/// A process the bench started; terminated (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    /// What it is, in the report.
    pub label: String,
    child: Child,
}

impl Proc {
    /// Starts `program` with `args`, its output written to `log`.
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(log)?;
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.display()))?;
        Ok(Proc {
            label: label.to_owned(),
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited early with {status}", self.label),
        }
    }

    /// Its peak resident memory so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        helmq_tests::procfs::peak_rss_mib(self.pid()).unwrap_or(f64::NAN)
    }

    /// Its CPU time so far.
    pub fn cpu(&self) -> Duration {
        helmq_tests::procfs::cpu_time(self.pid()).unwrap_or_default()
    }

    /// SIGTERM, and SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(5));
        }
    }
}
