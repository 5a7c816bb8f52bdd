//! `helmqctl`: the operator CLI (see the `helmq_ctl` library).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = helmq_ctl::Args::parse();
    match helmq_ctl::run(args, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helmqctl: {e}");
            ExitCode::FAILURE
        }
    }
}
