//! `helmq-worker`: pulls jobs from JetStream and runs Helm.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use helmq_worker::{Args, HelmCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(refusal) = args.allowlist() {
        // Like a clap usage error: one line, exit code 2, before anything starts.
        eprintln!("helmq-worker: {refusal}");
        std::process::exit(2);
    }
    helmq_telemetry::init_tracing(&args.service.log);
    let driver = HelmCli::new(args.helm())?;
    let shutdown = CancellationToken::new();
    helmq_telemetry::cancel_on_signals(shutdown.clone());
    helmq_worker::run(args, driver, shutdown).await?;
    Ok(())
}
