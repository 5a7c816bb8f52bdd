//! Writes the generated artifacts (CRD, JSON Schemas) under a repository root, or with
//! `--check` reports the stale ones and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut root = PathBuf::from(".");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--root" => match args.next() {
                Some(dir) => root = dir.into(),
                None => return usage("--root needs a directory"),
            },
            "-h" | "--help" => {
                println!("usage: schemagen [--check] [--root DIR]");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let artifacts = match helmq_schemas::generate::artifacts() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("schemagen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = 0;
    for artifact in artifacts {
        let path = root.join(&artifact.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == artifact.contents {
            continue;
        }
        if check {
            eprintln!("stale: {} (run `just generate`)", artifact.path.display());
            stale += 1;
            continue;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &artifact.contents));
        if let Err(e) = written {
            eprintln!("schemagen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", artifact.path.display());
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("schemagen: {problem}\nusage: schemagen [--check] [--root DIR]");
    ExitCode::from(2)
}
