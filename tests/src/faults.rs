//! The fault suite's shared record (issue 13): what a scenario writes when it finishes
//! ([`Row`], [`write_row`] into `target/faults/rows/NN.json`), the runs and status events it
//! records, and the invariant checks over them as pure functions: overlapping Helm runs per
//! release ([`overlapping_runs`]), runs per job beyond what was published ([`extra_runs`]),
//! terminal statuses per job ([`terminal_statuses`]) and Component statuses that went back
//! ([`regressions`]). [`render`] turns the rows into `docs/RELIABILITY.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use helmq_schemas::event::{Position, StatusEvent, StatusPhase};
use serde::{Deserialize, Serialize};

/// Errors reading or writing rows.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A row file is not a row.
    #[error("{path} is not a fault-suite row: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One scenario's result, as `docs/RELIABILITY.md` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Row {
    /// The scenario's number (1..=10).
    pub scenario: u32,
    /// Its short name, e.g. `Worker crashes`.
    pub name: String,
    /// What was done, with counts.
    pub injected: String,
    /// Jobs published (distinct jobs, not copies).
    pub jobs: u64,
    /// Releases they touched.
    pub releases: u64,
    /// Jobs without a terminal status, and statuses lost.
    pub lost: u64,
    /// Pairs of Helm runs on one release that overlapped in time.
    pub overlapping_runs: u64,
    /// Helm runs beyond one per published job.
    pub duplicated_runs: u64,
    /// Why those runs happened (and what idempotency absorbed).
    pub duplicated_why: String,
    /// How long recovery took, as text with seconds.
    pub recovery: String,
    /// The test that proves it, e.g. `faults::worker_crash::...`.
    pub test: String,
    /// Other figures the scenario printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, String>,
}

/// Where rows go: `<workspace>/target/faults/rows/`.
pub fn rows_dir() -> PathBuf {
    crate::workspace_root().join("target/faults/rows")
}

/// Writes `row` to `dir/NN.json` (NN = its scenario number) and returns the path.
pub fn write_row_to(dir: &Path, row: &Row) -> Result<PathBuf, RowError> {
    std::fs::create_dir_all(dir).map_err(|source| RowError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(format!("{:02}.json", row.scenario));
    let text = serde_json::to_string_pretty(row).map_err(|source| RowError::Parse {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| RowError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes `row` into [`rows_dir`]; panics (the scenario's test fails) when it cannot.
pub fn write_row(row: &Row) {
    match write_row_to(&rows_dir(), row) {
        Ok(path) => eprintln!("faults: row written to {}", path.display()),
        Err(e) => panic!("{e}"),
    }
}

/// Every row in `dir`, by scenario number (a missing directory has none).
pub fn read_rows(dir: &Path) -> Result<BTreeMap<u32, Row>, RowError> {
    let mut rows = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(source) => {
            return Err(RowError::Io {
                action: "read",
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| RowError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let row: Row = serde_json::from_str(&text).map_err(|source| RowError::Parse {
            path: path.clone(),
            source,
        })?;
        rows.insert(row.scenario, row);
    }
    Ok(rows)
}

/// One Helm run (a mutating call: upgrade, rollback, uninstall) as a recording driver or the
/// fake helm saw it. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `namespace/name` of the release.
    pub release: String,
    /// The job's Component uid (empty when the run does not say, e.g. a recovery rollback).
    pub uid: String,
    /// The job's generation (0 when the run does not say).
    pub generation: i64,
    /// `apply`/`upgrade`, `rollback`, `uninstall`.
    pub action: String,
    /// The worker that ran it.
    pub worker: String,
    /// When it started.
    pub start: f64,
    /// When it ended: it returned, or (for a run killed with its worker) when it was killed.
    pub end: f64,
    /// Whether it ran to its end (success or failure) rather than being cancelled or killed.
    pub completed: bool,
}

/// Two runs on one release that overlapped in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    /// The release.
    pub release: String,
    /// The run that started first.
    pub first: Run,
    /// The run that started before the first ended.
    pub second: Run,
}

/// Every pair of runs on one release where one started before the other ended.
pub fn overlapping_runs(runs: &[Run]) -> Vec<Overlap> {
    let mut by_release: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        by_release.entry(&run.release).or_default().push(run);
    }
    let mut out = Vec::new();
    for (release, mut runs) in by_release {
        runs.sort_by(|a, b| a.start.total_cmp(&b.start));
        for (i, first) in runs.iter().enumerate() {
            for second in &runs[i + 1..] {
                if second.start >= first.end {
                    break;
                }
                out.push(Overlap {
                    release: release.to_owned(),
                    first: (*first).clone(),
                    second: (*second).clone(),
                });
            }
        }
    }
    out
}

/// Runs of one job beyond the times it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraRuns {
    /// The Component uid.
    pub uid: String,
    /// The generation.
    pub generation: i64,
    /// Times the job was published.
    pub published: usize,
    /// Apply/uninstall runs of it that ran to their end.
    pub completed: usize,
    /// Runs of it that were killed or cancelled.
    pub interrupted: usize,
}

impl ExtraRuns {
    /// Completed runs beyond one per publication.
    pub fn extra(&self) -> usize {
        self.completed.saturating_sub(self.published)
    }
}

/// Per job (uid, generation) that ran more often than published: how often it ran to its end
/// and how often it was interrupted. Runs without a uid (recovery rollbacks) do not count.
pub fn extra_runs(runs: &[Run], published: &HashMap<(String, i64), usize>) -> Vec<ExtraRuns> {
    let mut counts: BTreeMap<(String, i64), (usize, usize)> = BTreeMap::new();
    for run in runs
        .iter()
        .filter(|r| !r.uid.is_empty() && r.action != "rollback")
    {
        let entry = counts.entry((run.uid.clone(), run.generation)).or_default();
        if run.completed {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|((uid, generation), (completed, interrupted))| {
            let published = published
                .get(&(uid.clone(), generation))
                .copied()
                .unwrap_or(0);
            (completed + interrupted > published).then_some(ExtraRuns {
                uid,
                generation,
                published,
                completed,
                interrupted,
            })
        })
        .collect()
}

/// A completed run of a job that ran again although nothing explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnexplainedRepeat {
    /// The completed run that was not the job's last.
    pub completed: Run,
    /// The completed run of the same job after it.
    pub next: Run,
}

/// Per job (uid, generation, published once), every completed run followed by another
/// completed run of the same job, unless the worker that ran the first was killed after that
/// run began (`killed`: worker id to kill time) and before the next one started. A finished
/// job runs again only when its worker died before it recorded the result: anything else is a
/// lost acknowledgement or intent, and a bug. (A kill may land while the run ends: a helm the
/// kill missed by milliseconds still writes its end, after its worker's death.) Rollbacks and
/// runs without a uid do not count.
pub fn unexplained_repeats(runs: &[Run], killed: &HashMap<String, f64>) -> Vec<UnexplainedRepeat> {
    let mut by_job: BTreeMap<(&str, i64), Vec<&Run>> = BTreeMap::new();
    for run in runs
        .iter()
        .filter(|r| r.completed && !r.uid.is_empty() && r.action != "rollback")
    {
        by_job
            .entry((&run.uid, run.generation))
            .or_default()
            .push(run);
    }
    let mut out = Vec::new();
    for mut completed in by_job.into_values() {
        completed.sort_by(|a, b| a.start.total_cmp(&b.start));
        for pair in completed.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            let explained = killed
                .get(&first.worker)
                .is_some_and(|at| *at >= first.start && *at <= next.start);
            if !explained {
                out.push(UnexplainedRepeat {
                    completed: first.clone(),
                    next: next.clone(),
                });
            }
        }
    }
    out
}

/// Whether a status phase ends a job.
pub fn is_terminal(phase: StatusPhase) -> bool {
    matches!(
        phase,
        StatusPhase::Ready
            | StatusPhase::Failed
            | StatusPhase::Terminated
            | StatusPhase::TerminationFailed
    )
}

/// What the status events say about each expected job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TerminalReport {
    /// Jobs (uid, generation) with no terminal status event.
    pub missing: Vec<(String, i64)>,
    /// Jobs with two different terminal phases (e.g. `Ready` and `Failed`).
    pub conflicting: Vec<(String, i64, Vec<StatusPhase>)>,
    /// Terminal events beyond one per job (the same outcome published again).
    pub repeated: usize,
}

/// Checks that every expected job (uid, generation) ended in exactly one terminal status.
pub fn terminal_statuses(expected: &[(String, i64)], events: &[StatusEvent]) -> TerminalReport {
    let mut seen: HashMap<(String, i64), Vec<StatusPhase>> = HashMap::new();
    for event in events.iter().filter(|e| is_terminal(e.phase)) {
        let uid = event.component.uid.clone().unwrap_or_default();
        seen.entry((uid, event.component.generation))
            .or_default()
            .push(event.phase);
    }
    let mut report = TerminalReport::default();
    for job in expected {
        match seen.get(job) {
            None => report.missing.push(job.clone()),
            Some(phases) => {
                let mut distinct = phases.clone();
                distinct.sort_by_key(|p| p.as_str());
                distinct.dedup();
                if distinct.len() > 1 {
                    report
                        .conflicting
                        .push((job.0.clone(), job.1, distinct.clone()));
                }
                report.repeated += phases.len() - 1;
            }
        }
    }
    report
}

/// A Component whose stored status position `(generation, order)` went back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    /// The Component's name.
    pub component: String,
    /// The position before.
    pub from: Position,
    /// The lower position written after it.
    pub to: Position,
}

/// Every step back in each Component's positions, given in the order they were written.
pub fn regressions(writes: &BTreeMap<String, Vec<Position>>) -> Vec<Regression> {
    let mut out = Vec::new();
    for (component, positions) in writes {
        for pair in positions.windows(2) {
            if pair[1] < pair[0] {
                out.push(Regression {
                    component: component.clone(),
                    from: pair[0],
                    to: pair[1],
                });
            }
        }
    }
    out
}

/// The scenarios of issues 13 and 19: number, name and the command that runs it.
pub const SCENARIOS: [(u32, &str, &str); 10] = [
    (1, "Worker crashes", "just faults"),
    (2, "NATS restarts", "just faults"),
    (3, "3-node JetStream cluster", "just faults"),
    (4, "Partition", "just faults"),
    (5, "Writer down", "just faults"),
    (6, "API faults", "just faults"),
    (7, "Duplicates and reordering", "just faults"),
    (8, "Producer failover", "just faults"),
    (
        9,
        "Crash during `--wait` on a real cluster",
        "just e2e-rig (or HELMQ_E2E=1 just e2e crash)",
    ),
    (10, "Stall between lease and Helm", "just faults"),
];

/// `docs/RELIABILITY.md` from the rows; `machine` and `when` say where and when they were made.
pub fn render(rows: &BTreeMap<u32, Row>, machine: &str, when: &str) -> String {
    let mut out = String::from(
        "# Reliability: faults survived, nothing lost\n\n\
         <!-- Generated by `just faults` (tests/src/bin/faults-report.rs) from target/faults/rows/ and tests/src/reliability.md; do not edit. -->\n\n\
         helmq promises, while processes die and the network fails:\n\n\
         - every job ends in exactly one terminal status;\n\
         - no release ever has two Helm runs at once;\n\
         - no Component's status regresses (goes back to an older event);\n\
         - nothing is lost: no job, no status event.\n\n\
         The fault suite (`just faults`, run by CI after `just test`) injects one fault per scenario \
         against real `nats-server` processes, the real worker binaries or pools and the real status \
         writer over the in-memory API server, records every Helm run (start and end per release) \
         and checks the promises from the records, the status events and the final Component \
         statuses. Scenario 9 is a case of the end-to-end suite on a real cluster.\n\n\
         | # | Scenario | Injected | Jobs | Releases | Lost | Overlapping runs | Duplicated runs (why) | Recovery | Test |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (number, name, command) in SCENARIOS {
        let line = match rows.get(&number) {
            Some(row) => format!(
                "| {number} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | `{}` |\n",
                cell(&row.name),
                cell(&row.injected),
                row.jobs,
                row.releases,
                row.lost,
                row.overlapping_runs,
                row.duplicated_runs,
                cell(&row.duplicated_why),
                cell(&row.recovery),
                cell(&row.test),
            ),
            None => format!("| {number} | {name} | not run: `{command}` runs it | | | | | | | |\n"),
        };
        out.push_str(&line);
    }
    let figures: Vec<_> = rows.values().filter(|r| !r.figures.is_empty()).collect();
    if !figures.is_empty() {
        out.push_str("\n## Figures\n\n");
        for row in figures {
            let list: Vec<String> = row
                .figures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push_str(&format!(
                "- {}. {}: {}\n",
                row.scenario,
                row.name,
                list.join("; ")
            ));
        }
    }
    out.push_str(NOTES);
    out.push_str(&format!(
        "\nGenerated by `just faults` on {machine}, {when}.\n"
    ));
    out
}

/// The prose after the table: how exclusivity is kept and what survives what.
const NOTES: &str = include_str!("reliability.md");

/// The machine the suite ran on: OS, architecture, cores and the default nats-server's version.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let nats = crate::default_binary()
        .and_then(|b| crate::binary_version(&b))
        .map_or_else(
            || "no nats-server".to_owned(),
            |v| format!("nats-server {v}"),
        );
    format!(
        "{} {}, {cores} cores, {nats}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use helmq_schemas::event::Order;

    fn run(release: &str, uid: &str, start: f64, end: f64, completed: bool) -> Run {
        Run {
            release: release.into(),
            uid: uid.into(),
            generation: 1,
            action: "apply".into(),
            worker: "w".into(),
            start,
            end,
            completed,
        }
    }

    #[test]
    fn overlapping_runs_are_found_per_release() {
        // (runs, overlapping pairs)
        let cases: Vec<(Vec<Run>, usize)> = vec![
            (vec![], 0),
            (
                vec![run("a", "u", 0.0, 1.0, true), run("a", "u", 1.0, 2.0, true)],
                0,
            ),
            (
                vec![run("a", "u", 0.0, 1.0, true), run("a", "u", 0.5, 2.0, true)],
                1,
            ),
            (
                vec![run("a", "u", 0.0, 1.0, true), run("b", "u", 0.5, 2.0, true)],
                0,
            ),
            // A long run overlaps two later ones that do not overlap each other.
            (
                vec![
                    run("a", "u", 0.0, 10.0, false),
                    run("a", "u", 1.0, 2.0, true),
                    run("a", "u", 3.0, 4.0, true),
                ],
                2,
            ),
            // Given out of order.
            (
                vec![run("a", "u", 5.0, 6.0, true), run("a", "u", 0.0, 5.5, true)],
                1,
            ),
        ];
        for (runs, want) in cases {
            assert_eq!(overlapping_runs(&runs).len(), want, "{runs:?}");
        }
    }

    #[test]
    fn extra_runs_count_completed_and_interrupted_runs_beyond_publications() {
        let published: HashMap<(String, i64), usize> =
            [(("u".to_owned(), 1), 1), (("v".to_owned(), 1), 3)].into();
        // (runs, (uid, completed, interrupted, extra) of each reported job)
        type Want<'a> = Vec<(&'a str, usize, usize, usize)>;
        let cases: Vec<(Vec<Run>, Want)> = vec![
            (vec![run("a", "u", 0.0, 1.0, true)], vec![]),
            (
                vec![
                    run("a", "u", 0.0, 1.0, false),
                    run("a", "u", 2.0, 3.0, true),
                ],
                vec![("u", 1, 1, 0)],
            ),
            (
                vec![run("a", "u", 0.0, 1.0, true), run("a", "u", 2.0, 3.0, true)],
                vec![("u", 2, 0, 1)],
            ),
            // Published three times, run three times: nothing extra.
            (vec![run("a", "v", 0.0, 1.0, true); 3], vec![]),
            // A run of an unknown job counts as extra.
            (vec![run("a", "x", 0.0, 1.0, true)], vec![("x", 1, 0, 1)]),
            // Recovery rollbacks and runs without a uid do not count.
            (
                vec![
                    Run {
                        action: "rollback".into(),
                        ..run("a", "u", 0.0, 1.0, true)
                    },
                    run("a", "", 0.0, 1.0, true),
                    run("a", "u", 2.0, 3.0, true),
                ],
                vec![],
            ),
        ];
        for (runs, want) in cases {
            let got: Vec<_> = extra_runs(&runs, &published)
                .iter()
                .map(|e| (e.uid.clone(), e.completed, e.interrupted, e.extra()))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(u, c, i, x)| (u.to_owned(), c, i, x))
                .collect();
            assert_eq!(got, want, "{runs:?}");
        }
    }

    fn event(uid: &str, generation: i64, phase: StatusPhase) -> StatusEvent {
        let json = serde_json::json!({
            "schema": "helmq.status/v1",
            "jobId": "j",
            "component": {"namespace": "n", "name": "c", "uid": uid, "generation": generation},
            "phase": phase.as_str(),
            "message": "",
            "attempt": 1,
            "worker": "w",
            "at": "2026-01-01T00:00:00Z",
            "jobSequence": 1,
            "order": 1,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_job_needs_exactly_one_terminal_phase() {
        let expected = vec![("u".to_owned(), 1), ("v".to_owned(), 2)];
        // (events, missing, conflicting, repeated)
        let cases = vec![
            (
                vec![
                    event("u", 1, StatusPhase::Deploying),
                    event("u", 1, StatusPhase::Ready),
                    event("v", 2, StatusPhase::Failed),
                ],
                0,
                0,
                0,
            ),
            (vec![event("u", 1, StatusPhase::Ready)], 1, 0, 0),
            // Deploying is not terminal; a generation other than the job's does not count.
            (
                vec![
                    event("u", 1, StatusPhase::Deploying),
                    event("v", 1, StatusPhase::Ready),
                ],
                2,
                0,
                0,
            ),
            (
                vec![
                    event("u", 1, StatusPhase::Ready),
                    event("u", 1, StatusPhase::Failed),
                    event("v", 2, StatusPhase::Ready),
                ],
                0,
                1,
                1,
            ),
            (
                vec![
                    event("u", 1, StatusPhase::Ready),
                    event("u", 1, StatusPhase::Ready),
                    event("v", 2, StatusPhase::Terminated),
                ],
                0,
                0,
                1,
            ),
        ];
        for (events, missing, conflicting, repeated) in cases {
            let report = terminal_statuses(&expected, &events);
            assert_eq!(
                (
                    report.missing.len(),
                    report.conflicting.len(),
                    report.repeated
                ),
                (missing, conflicting, repeated),
                "{report:?}"
            );
        }
    }

    #[test]
    fn a_position_that_goes_back_is_a_regression() {
        // (positions written, regressions)
        let cases: Vec<(Vec<(i64, u64)>, usize)> = vec![
            (vec![], 0),
            (vec![(1, 1), (1, 2), (2, 1)], 0),
            (vec![(1, 1), (1, 1)], 0),
            (vec![(1, 2), (1, 1)], 1),
            (vec![(2, 1), (1, 5), (2, 2)], 1),
        ];
        for (positions, want) in cases {
            let written = positions
                .iter()
                .map(|&(generation, order)| Position {
                    generation,
                    order: Order::from_raw(order),
                })
                .collect();
            let writes = BTreeMap::from([("c".to_owned(), written)]);
            assert_eq!(regressions(&writes).len(), want, "{positions:?}");
        }
    }

    #[test]
    fn a_finished_job_may_run_again_only_after_its_worker_died() {
        let run = |worker: &str, start: f64, end: f64, completed: bool| Run {
            release: "apps/r".into(),
            uid: "u".into(),
            generation: 1,
            action: "apply".into(),
            worker: worker.into(),
            start,
            end,
            completed,
        };
        let killed = HashMap::from([("w1".to_owned(), 2.5), ("w2".to_owned(), 9.0)]);
        // w1 finished at 2, died at 2.5; w2 ran it again at 5 and died at 9; w3 ran it at 10.
        let twice_killed = [
            run("w1", 1.0, 2.0, true),
            run("w2", 5.0, 6.0, true),
            run("w3", 10.0, 11.0, true),
        ];
        assert!(unexplained_repeats(&twice_killed, &killed).is_empty());
        // w3 finished it and lived, yet w4 ran it again: unexplained.
        let lost_ack = [run("w3", 1.0, 2.0, true), run("w4", 5.0, 6.0, true)];
        let found = unexplained_repeats(&lost_ack, &killed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].completed.worker, "w3");
        // Killed while its run was ending (the run wrote its end after the kill): explained.
        let killed_at_the_end = [run("w1", 2.0, 2.6, true), run("w3", 5.0, 6.0, true)];
        assert!(unexplained_repeats(&killed_at_the_end, &killed).is_empty());
        // Killed only after the next run had started, or before its run began: unexplained.
        let killed_late = [run("w2", 1.0, 2.0, true), run("w3", 5.0, 6.0, true)];
        assert_eq!(unexplained_repeats(&killed_late, &killed).len(), 1);
        let killed_before = [run("w1", 3.0, 4.0, true), run("w3", 5.0, 6.0, true)];
        assert_eq!(unexplained_repeats(&killed_before, &killed).len(), 1);
        // Interrupted runs and rollbacks never count.
        let interrupted = [run("w3", 1.0, 2.0, false), run("w4", 5.0, 6.0, true)];
        assert!(unexplained_repeats(&interrupted, &killed).is_empty());
    }

    #[test]
    fn rows_round_trip_and_render_with_missing_scenarios() {
        let dir = tempfile::tempdir().unwrap();
        let row = Row {
            scenario: 1,
            name: "Worker crashes".into(),
            injected: "SIGKILL | 12 kills".into(),
            jobs: 500,
            releases: 200,
            duplicated_runs: 3,
            duplicated_why: "redelivered after a crash".into(),
            recovery: "4.2 s".into(),
            test: "faults::worker_crash::t".into(),
            figures: BTreeMap::from([("kills".to_owned(), "12".to_owned())]),
            ..Row::default()
        };
        write_row_to(dir.path(), &row).unwrap();
        let rows = read_rows(dir.path()).unwrap();
        assert_eq!(rows[&1], row);
        let doc = render(&rows, "test machine", "today");
        assert!(doc.contains("| 1 | Worker crashes | SIGKILL \\| 12 kills | 500 | 200 | 0 | 0 | 3 (redelivered after a crash) | 4.2 s | `faults::worker_crash::t` |"), "{doc}");
        assert!(
            doc.contains("| 3 | 3-node JetStream cluster | not run: `just faults` runs it |"),
            "{doc}"
        );
        assert!(
            doc.contains("| 2 | NATS restarts | not run: `just faults` runs it |"),
            "{doc}"
        );
        assert!(doc.contains("- 1. Worker crashes: kills: 12"), "{doc}");
        assert!(doc.contains("on test machine, today."), "{doc}");
        assert!(read_rows(&dir.path().join("none")).unwrap().is_empty());
        std::fs::write(dir.path().join("05.json"), "{").unwrap();
        assert!(matches!(read_rows(dir.path()), Err(RowError::Parse { .. })));
    }
}
