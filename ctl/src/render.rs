//! How `helmqctl` prints: aligned tables for people, JSON for scripts.

use std::io::Write;

use helmq_queue::dlq::{Replayed, StoredDeadLetter};
use helmq_queue::{PublishOutcome, TopologyReport};
use helmq_schemas::event::{JobEvent, StatusEvent};
use serde_json::{Value, json};

use crate::CtlError;
use crate::status::QueueStatus;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON (one document, or one line per event for `watch`).
    Json,
}

fn json_out(out: &mut (dyn Write + Send), value: &Value) -> Result<(), CtlError> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )?;
    Ok(())
}

/// Writes rows as columns padded to the widest cell.
fn table(
    out: &mut (dyn Write + Send),
    header: &[&str],
    rows: &[Vec<String>],
) -> Result<(), CtlError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

pub(crate) fn setup(
    out: &mut (dyn Write + Send),
    output: Output,
    report: &TopologyReport,
) -> Result<(), CtlError> {
    if output == Output::Json {
        return json_out(
            out,
            &json!({"created": report.created, "existing": report.existing, "differences": report.differences}),
        );
    }
    for part in &report.created {
        writeln!(out, "created  {part}")?;
    }
    for part in &report.existing {
        writeln!(out, "present  {part}")?;
    }
    for note in &report.differences {
        writeln!(out, "note     {note}")?;
    }
    Ok(())
}

pub(crate) fn status(
    out: &mut (dyn Write + Send),
    output: Output,
    status: &QueueStatus,
) -> Result<(), CtlError> {
    if output == Output::Json {
        return json_out(out, &serde_json::to_value(status).unwrap_or_default());
    }
    let streams: Vec<Vec<String>> = status
        .streams
        .iter()
        .map(|s| vec![s.name.clone(), s.messages.to_string(), s.bytes.to_string()])
        .collect();
    table(out, &["STREAM", "MESSAGES", "BYTES"], &streams)?;
    writeln!(out)?;
    let consumers: Vec<Vec<String>> = status
        .consumers
        .iter()
        .map(|c| {
            vec![
                format!("{}/{}", c.stream, c.name),
                c.pending.to_string(),
                c.in_flight.to_string(),
                c.redelivered.to_string(),
                c.waiting.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "CONSUMER",
            "LAG",
            "IN-FLIGHT",
            "REDELIVERED",
            "WAITING-PULLS",
        ],
        &consumers,
    )?;
    writeln!(out)?;
    writeln!(out, "dead letters: {}", status.dead_letters)?;
    if status.workers.is_empty() {
        writeln!(out, "workers seen: none")?;
    } else {
        writeln!(out)?;
        let workers: Vec<Vec<String>> = status
            .workers
            .iter()
            .map(|w| vec![w.worker.clone(), w.events.to_string(), w.last_seen.clone()])
            .collect();
        table(out, &["WORKER", "EVENTS", "LAST-SEEN"], &workers)?;
    }
    for missing in &status.missing {
        writeln!(out, "missing: {missing} (run `helmqctl setup`)")?;
    }
    Ok(())
}

fn letter_json(letter: &StoredDeadLetter, with_payload: bool) -> Value {
    let mut value = json!({
        "dlqSequence": letter.dlq_sequence,
        "subject": letter.letter.subject,
        "stream": letter.letter.stream,
        "streamSequence": letter.letter.sequence,
        "attempts": letter.letter.attempts,
        "reason": letter.letter.reason,
        "at": letter.at.map(|at| at.to_string()),
    });
    if with_payload {
        value["payload"] = serde_json::from_slice(&letter.letter.payload).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&letter.letter.payload).into_owned())
        });
    }
    value
}

pub(crate) fn dead_letters(
    out: &mut (dyn Write + Send),
    output: Output,
    letters: &[StoredDeadLetter],
) -> Result<(), CtlError> {
    if output == Output::Json {
        let list: Vec<Value> = letters.iter().map(|l| letter_json(l, false)).collect();
        return json_out(out, &Value::Array(list));
    }
    if letters.is_empty() {
        writeln!(out, "no dead letters")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.dlq_sequence.to_string(),
                l.letter.subject.clone(),
                l.letter.attempts.to_string(),
                l.at.map_or_else(|| "-".to_owned(), |at| at.to_string()),
                short(&l.letter.reason, 80),
            ]
        })
        .collect();
    table(out, &["SEQ", "SUBJECT", "ATTEMPTS", "AT", "REASON"], &rows)
}

pub(crate) fn dead_letter(
    out: &mut (dyn Write + Send),
    output: Output,
    letter: &StoredDeadLetter,
) -> Result<(), CtlError> {
    let value = letter_json(letter, true);
    if output == Output::Json {
        return json_out(out, &value);
    }
    writeln!(out, "sequence:  {}", letter.dlq_sequence)?;
    writeln!(out, "subject:   {}", letter.letter.subject)?;
    writeln!(
        out,
        "source:    {} #{}",
        letter.letter.stream, letter.letter.sequence
    )?;
    writeln!(out, "attempts:  {}", letter.letter.attempts)?;
    writeln!(
        out,
        "at:        {}",
        letter
            .at
            .map_or_else(|| "-".to_owned(), |at| at.to_string())
    )?;
    writeln!(out, "reason:    {}", letter.letter.reason)?;
    writeln!(out, "payload:")?;
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&value["payload"]).unwrap_or_default()
    )?;
    Ok(())
}

pub(crate) fn replayed(
    out: &mut (dyn Write + Send),
    output: Output,
    replayed: &[Replayed],
) -> Result<(), CtlError> {
    if output == Output::Json {
        let list: Vec<Value> = replayed
            .iter()
            .map(|r| {
                json!({
                    "dlqSequence": r.dlq_sequence,
                    "subject": r.subject,
                    "streamSequence": r.stream_sequence,
                })
            })
            .collect();
        return json_out(out, &Value::Array(list));
    }
    for r in replayed {
        writeln!(
            out,
            "replayed dead letter {} to {} (stream sequence {})",
            r.dlq_sequence, r.subject, r.stream_sequence
        )?;
    }
    Ok(())
}

pub(crate) fn purged(
    out: &mut (dyn Write + Send),
    output: Output,
    purged: u64,
) -> Result<(), CtlError> {
    if output == Output::Json {
        return json_out(out, &json!({"purged": purged}));
    }
    writeln!(out, "purged {purged} dead letter(s)")?;
    Ok(())
}

pub(crate) fn published(
    out: &mut (dyn Write + Send),
    output: Output,
    job: &JobEvent,
    outcome: Option<PublishOutcome>,
) -> Result<(), CtlError> {
    let (state, sequence) = match outcome {
        None => ("valid", None),
        Some(PublishOutcome::Stored { sequence }) => ("stored", Some(sequence)),
        Some(PublishOutcome::Duplicate { sequence }) => ("duplicate", Some(sequence)),
    };
    if output == Output::Json {
        return json_out(
            out,
            &json!({"id": job.id, "dedupeId": job.dedupe_id(), "result": state, "streamSequence": sequence}),
        );
    }
    let target = format!(
        "{} {}/{} generation {}",
        job.action.as_str(),
        job.component.namespace,
        job.component.name,
        job.component.generation
    );
    match outcome {
        None => writeln!(
            out,
            "job {} is valid ({target}); not published (--dry-run)",
            job.id
        )?,
        Some(PublishOutcome::Stored { sequence }) => writeln!(
            out,
            "published job {} ({target}) at stream sequence {sequence}",
            job.id
        )?,
        Some(PublishOutcome::Duplicate { sequence }) => writeln!(
            out,
            "job {} ({target}) is a duplicate of stream sequence {sequence} inside the duplicate window; not published again",
            job.id
        )?,
    }
    Ok(())
}

pub(crate) fn watch_header(out: &mut (dyn Write + Send), output: Output) -> Result<(), CtlError> {
    if output == Output::Table {
        writeln!(
            out,
            "{:<24}  {:<32}  {:>4}  {:<17}  {:>7}  {:<16}  MESSAGE",
            "AT", "COMPONENT", "GEN", "PHASE", "ATTEMPT", "WORKER"
        )?;
    }
    Ok(())
}

pub(crate) fn status_event(
    out: &mut (dyn Write + Send),
    output: Output,
    event: &StatusEvent,
) -> Result<(), CtlError> {
    if output == Output::Json {
        writeln!(out, "{}", String::from_utf8_lossy(&event.encode()))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24}  {:<32}  {:>4}  {:<17}  {:>7}  {:<16}  {}",
        event.at.to_string(),
        format!("{}/{}", event.component.namespace, event.component.name),
        event.component.generation,
        format!("{:?}", event.phase),
        event.attempt,
        event.worker,
        event.message
    )?;
    Ok(())
}
