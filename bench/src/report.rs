//! The run's figures: a table for people (figure, value, target, whether it is met) and
//! `summary.json` for tools.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

/// Figures collected so far.
#[derive(Debug, Default)]
pub struct Report {
    summary: Map<String, Value>,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    figure: String,
    value: String,
    target: String,
    met: Option<bool>,
}

impl Report {
    /// Sets `key` in the summary.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.summary.insert(key.to_owned(), value.into());
    }

    /// Adds a line to the table: `met` is `None` for figures without a target.
    pub fn row(&mut self, figure: &str, value: String, target: &str, met: Option<bool>) {
        self.rows.push(Row {
            figure: figure.to_owned(),
            value,
            target: target.to_owned(),
            met,
        });
    }

    /// The summary so far.
    pub fn summary(&self) -> &Map<String, Value> {
        &self.summary
    }

    /// The table.
    pub fn table(&self) -> String {
        let width = |f: fn(&Row) -> &str, title: &str| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let (w1, w2, w3) = (
            width(|r| &r.figure, "figure"),
            width(|r| &r.value, "value"),
            width(|r| &r.target, "target"),
        );
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:w1$}  {:>w2$}  {:w3$}  met",
            "figure", "value", "target"
        );
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            let _ = writeln!(
                out,
                "{:w1$}  {:>w2$}  {:w3$}  {met}",
                row.figure, row.value, row.target
            );
        }
        out
    }

    /// Writes the summary as pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&self.summary).map_err(std::io::Error::from)?;
        std::fs::write(path, text + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_marks_targets() {
        let mut report = Report::default();
        report.row("pipeline jobs/s", "12345".into(), ">= 10000", Some(true));
        report.row("p99 ms", "12.5".into(), "<= 10", Some(false));
        report.row("cores", "2".into(), "", None);
        report.set("cores", 2);
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].ends_with("yes"), "{table}");
        assert!(lines[2].ends_with("NO"), "{table}");
        // Values are right-aligned: they end in the same column.
        assert_eq!(
            lines[1].find("12345").map(|i| i + 5),
            lines[2].find("12.5").map(|i| i + 4)
        );
        assert_eq!(report.summary()["cores"], 2);
    }
}
