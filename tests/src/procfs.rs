//! What Linux says about a process and the machine, read in one place for the tests and the
//! benchmark: whether a process lives, is a zombie or is stopped (`/proc/<pid>/stat`), its peak
//! resident memory (`VmHWM` in `/proc/<pid>/status`), its CPU time, and the machine's busy
//! time (`/proc/stat`) and load.

use std::time::Duration;

/// Clock ticks per second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const CLOCK_TICKS: u64 = 100;

/// `VmHWM` (peak resident set) in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses), starting with the state: field 3 of man 5 proc is the first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(
        stat.get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect(),
    )
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, `T`, ...); `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.first()?.chars().next()
}

/// Whether `pid` exists and is not a zombie (exited, not yet reaped).
pub fn is_alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// Whether `pid` is stopped (`T`, or `t` when traced), or gone.
pub fn is_stopped_or_gone(pid: u32) -> bool {
    state(pid).is_none_or(|s| matches!(s, 'T' | 't'))
}

/// One process of the machine, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub parent: u32,
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its command line, arguments separated by spaces (empty for a zombie).
    pub command: String,
}

/// Every process of the machine; one that ends while it is read is left out.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let fields = stat_fields(&stat)?;
            let command = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some(Process {
                pid,
                state: fields.first()?.chars().next()?,
                parent: fields.get(1)?.parse().ok()?,
                command: String::from_utf8_lossy(&command)
                    .replace('\0', " ")
                    .trim()
                    .to_owned(),
            })
        })
        .collect()
}

/// `root` and every process below it among `all` (children, their children, ...), `root`
/// first; empty when `root` is not among them.
pub fn tree(root: u32, all: &[Process]) -> Vec<&Process> {
    let mut tree: Vec<&Process> = all.iter().filter(|p| p.pid == root).collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].pid;
        tree.extend(all.iter().filter(|p| p.parent == parent));
        i += 1;
    }
    tree
}

/// Peak resident memory of `pid` in KiB; `None` once it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm_kib(&status)
}

/// User plus system CPU ticks from the text of `/proc/<pid>/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    // After the name: state is field 3, utime 14, stime 15 (man 5 proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// User plus system CPU ticks of the children a process has waited for (the `cutime` and
/// `cstime` of `/proc/<pid>/stat`): what its finished child processes used.
pub fn parse_children_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    // cutime is field 16, cstime 17 (man 5 proc).
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// Busy ticks of all CPUs (everything but idle and iowait) from the text of `/proc/stat`.
pub fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(total - idle)
}

/// Peak resident memory of `pid` in MiB; `None` once it is gone.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    peak_rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}

/// CPU time `pid` has used so far; `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(ticks)
}

/// CPU time the children `pid` has waited for have used so far; `None` once it is gone.
pub fn children_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_children_cpu_ticks(&stat).map(ticks)
}

/// CPU time all processes of the machine have used so far.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy_ticks(&stat).map(ticks)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / CLOCK_TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_in_its_parents_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let all = processes();
        let mine: Vec<(u32, &str)> = tree(std::process::id(), &all)
            .into_iter()
            .map(|p| (p.pid, p.command.as_str()))
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(mine.first().map(|p| p.0), Some(std::process::id()));
        assert!(mine.contains(&(child.id(), "sleep 30")), "{mine:?}");
    }

    #[test]
    fn this_process_is_alive_and_not_stopped() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(!is_stopped_or_gone(me));
        assert!(peak_rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(!is_alive(u32::MAX) && is_stopped_or_gone(u32::MAX));
    }

    #[test]
    fn reads_peak_rss_cpu_ticks_and_machine_busy_time() {
        let status =
            "Name:\tnats-server\nVmPeak:\t  800000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t 20000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(23456));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 8 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(parse_children_cpu_ticks(stat), Some(0));
        let parent = "7 (worker) S 1 7 7 0 -1 4194560 100 0 0 0 250 37 900 45 20 0 8 0";
        assert_eq!(parse_children_cpu_ticks(parent), Some(945));
        assert_eq!(
            parse_children_cpu_ticks("7 (worker) S 1 7 7 0 -1 0 0 0 0 0 1 2"),
            None
        );
        let machine = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy_ticks(machine), Some(161));
    }
}
