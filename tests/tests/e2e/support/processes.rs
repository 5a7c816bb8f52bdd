//! [`Processes`]: the producers and workers a case starts (as `just up` starts them), each in
//! its own process group with its output in `<dir>/logs/<name>.log`, and what they did: their
//! logs, the helm subcommands the workers ran, their peak memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use helmq_tests::procfs::{children_cpu_time, cpu_time, peak_rss_kib};
use tokio::process::{Child, Command};

use super::{Options, binary, kubectl, process_tree, run_ok};

/// One started helmq process.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The case's helmq processes, and what the next one is started with.
#[derive(Debug)]
pub(crate) struct Processes {
    /// The case's directory: logs, Helm caches, the helm wrapper and its record.
    dir: PathBuf,
    options: Options,
    nats_url: String,
    namespace: String,
    repo_url: String,
    helm_wrapper: PathBuf,
    kubectl: String,
    started: Vec<Proc>,
    workers_started: usize,
}

impl Processes {
    /// None yet: they will talk to `nats_url`, watch `namespace`, take charts from `repo_url`,
    /// run the real `helm` through a wrapper that records its subcommands, and keep their files
    /// in `dir`.
    pub(super) fn new(
        options: Options,
        dir: &Path,
        nats_url: &str,
        namespace: &str,
        repo_url: &str,
        helm: &str,
    ) -> Processes {
        std::fs::create_dir_all(dir.join("logs")).expect("logs dir");
        // Every helm run goes through this script, which notes its subcommand and then becomes
        // the real helm (exec: same process, so signals and kills reach helm itself).
        let helm_wrapper = dir.join("helm");
        std::fs::write(
            &helm_wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
                dir.join("helm-calls.log").display(),
                resolve(helm).display()
            ),
        )
        .expect("write the helm wrapper");
        std::fs::set_permissions(
            &helm_wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the helm wrapper");
        Processes {
            dir: dir.to_owned(),
            options,
            nats_url: nats_url.to_owned(),
            namespace: namespace.to_owned(),
            repo_url: repo_url.to_owned(),
            helm_wrapper,
            kubectl: kubectl(),
            started: Vec::new(),
            workers_started: 0,
        }
    }

    fn expand(&self, args: &[String]) -> Vec<String> {
        args.iter()
            .map(|a| a.replace("{namespace}", &self.namespace))
            .collect()
    }

    fn spawn(&mut self, name: String, mut command: Command) {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            // Its own process group: signals meant for the test never reach it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.started.push(Proc { name, child, log });
    }

    /// Starts producer `helmq-producer-<i>` (watcher and writer) watching the case's namespace.
    pub(crate) fn start_producer(&mut self, i: usize) {
        let mut command = Command::new(binary("helmq-producer"));
        command.args([
            "--nats-url",
            &self.nats_url,
            "--listen",
            "127.0.0.1:0",
            "--namespaces",
            &self.namespace,
            "--leader-identity",
            &format!("e2e-producer-{i}"),
        ]);
        command.args(self.expand(&self.options.producer_args));
        if let Some(kubeconfig) = &self.options.producer_kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        self.spawn(format!("helmq-producer-{i}"), command);
    }

    /// Starts one more worker (`helmq-worker-<n>`) with explicit allowlists (the case's chart
    /// repository, the release namespaces of the cases) and returns its name.
    pub(crate) fn start_worker(&mut self) -> String {
        self.workers_started += 1;
        let i = self.workers_started;
        let cache = self.dir.join(format!("cache-{i}"));
        let mut command = Command::new(binary("helmq-worker"));
        command.args([
            "--nats-url",
            &self.nats_url,
            "--listen",
            "127.0.0.1:0",
            "--helm-bin",
            self.helm_wrapper.to_str().expect("utf-8 path"),
            "--kubectl-bin",
            &self.kubectl,
            "--worker-id",
            &format!("e2e-{}-{i}", self.options.tag),
            "--cache-dir",
            cache.to_str().expect("utf-8 path"),
            "--allowed-sources",
            &self.repo_url,
            "--allowed-namespaces",
            &release_namespaces(&self.namespace),
        ]);
        if let Some(kubeconfig) = &self.options.worker_kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
            command.env("KUBECONFIG", kubeconfig);
        }
        command.args(self.expand(&self.options.worker_args));
        let name = format!("helmq-worker-{i}");
        self.spawn(name.clone(), command);
        name
    }

    fn process(&mut self, name: &str) -> &mut Proc {
        self.started
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The process id of a started process (e.g. `helmq-worker-1`), which is also its process
    /// group id.
    pub(crate) fn pid(&mut self, name: &str) -> u32 {
        self.process(name)
            .child
            .id()
            .unwrap_or_else(|| panic!("{name} has exited"))
    }

    /// SIGKILLs a process together with all its descendants (its helm children, whatever
    /// process group they run in), as the OOM killer or a lost node ends a pod, and reaps it.
    pub(crate) async fn kill_tree(&mut self, name: &str) {
        let pids: Vec<String> = process_tree(self.pid(name))
            .into_iter()
            .map(|(pid, _)| pid.to_string())
            .collect();
        let mut args = vec!["-KILL", "--"];
        args.extend(pids.iter().map(String::as_str));
        run_ok("kill", &args).await;
        let _ = self.process(name).child.wait().await;
    }

    /// Stops one process with SIGTERM (as Kubernetes stops a pod) and waits for it to exit.
    pub(crate) async fn terminate(&mut self, name: &str) {
        let pid = self.pid(name);
        run_ok("kill", &["-TERM", &pid.to_string()]).await;
        let exited = tokio::time::timeout(Duration::from_secs(70), self.process(name).child.wait())
            .await
            .is_ok();
        assert!(exited, "{name} did not stop within 70s of SIGTERM");
    }

    /// Stops every process (SIGTERM, as `just down` does) and waits up to 70 s for each.
    pub(crate) async fn stop_all(&mut self) {
        for p in &mut self.started {
            if let Some(pid) = p.child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for p in &mut self.started {
            let _ = tokio::time::timeout(Duration::from_secs(70), p.child.wait()).await;
        }
    }

    /// Everything the processes logged so far.
    pub(crate) fn logs(&self) -> String {
        self.started
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }

    /// Prints the last 40 lines of every process's log (for a case that panicked).
    pub(super) fn print_log_tails(&self) {
        for p in &self.started {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of {} ({}):", p.name, p.log.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }

    /// The helm subcommands the workers ran so far, in order (`status`, `upgrade`, `pull`, ...).
    pub(crate) fn helm_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("helm-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Counts of [`helm_calls`](Self::helm_calls) per subcommand.
    pub(crate) fn helm_call_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in self.helm_calls() {
            *counts.entry(call).or_default() += 1;
        }
        counts
    }

    /// The CPU time of every started process so far (`<name>`), and of the children it has
    /// waited for (`<name> children`: a worker's Helm runs).
    pub(crate) fn cpu_times(&self) -> Vec<(String, Duration)> {
        self.started
            .iter()
            .filter_map(|p| p.child.id().map(|pid| (&p.name, pid)))
            .flat_map(|(name, pid)| {
                [
                    (name.clone(), cpu_time(pid).unwrap_or_default()),
                    (
                        format!("{name} children"),
                        children_cpu_time(pid).unwrap_or_default(),
                    ),
                ]
            })
            .collect()
    }

    /// Peak RSS (KiB) of every running process, by name.
    pub(crate) fn peak_rss(&self) -> Vec<(String, u64)> {
        self.started
            .iter()
            .filter_map(|p| {
                let pid = p.child.id()?;
                Some((p.name.clone(), peak_rss_kib(pid).unwrap_or(0)))
            })
            .collect()
    }
}

/// An absolute path for `program` (a path, or a name looked up on `PATH`).
fn resolve(program: &str) -> PathBuf {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{program}: {e}"));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// The release namespaces the cases use, all derived from the case's namespace: the workers'
/// `--allowed-namespaces` (the worker does not start without one).
fn release_namespaces(namespace: &str) -> String {
    ["", "-app", "-rel", "-test-nginx", "-try-webapp"]
        .map(|suffix| format!("{namespace}{suffix}"))
        .join(",")
}
