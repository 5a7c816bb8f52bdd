//! `helmqctl`: operator commands against the queue.

use async_nats::jetstream;
use clap::{Parser, Subcommand};
use helmq_queue::{NatsArgs, Topology, TopologyReport};

/// Errors of `helmqctl` commands.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] helmq_queue::ConnectError),
    /// Topology setup failed.
    #[error(transparent)]
    Topology(#[from] helmq_queue::TopologyError),
}

/// Operate a helmq installation: set up its JetStream topology.
#[derive(Debug, Parser)]
#[command(name = "helmqctl", version, about)]
pub struct Args {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `helmqctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the streams, consumers and KV buckets helmq needs (a no-op when present).
    Setup {
        /// Stream replicas (3 on a clustered server).
        #[arg(long, env = "HELMQ_REPLICAS", default_value_t = 1)]
        replicas: usize,
    },
}

/// Runs one command and returns what to print.
pub async fn run(args: Args) -> Result<String, CtlError> {
    match args.command {
        Command::Setup { replicas } => {
            let client = helmq_queue::connect(&args.nats, "helmqctl").await?;
            let js = jetstream::new(client);
            let topology = Topology {
                replicas,
                ..Topology::default()
            };
            let report = topology.ensure(&js).await?;
            Ok(render_setup(&report))
        }
    }
}

fn render_setup(report: &TopologyReport) -> String {
    let mut out = String::new();
    for part in &report.created {
        out.push_str(&format!("created  {part}\n"));
    }
    for part in &report.existing {
        out.push_str(&format!("present  {part}\n"));
    }
    for note in &report.differences {
        out.push_str(&format!("note     {note}\n"));
    }
    out
}
