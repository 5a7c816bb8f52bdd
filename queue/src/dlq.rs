//! Dead letters: a message that cannot succeed (malformed, invalid, permanently failing or out
//! of attempts) is copied byte for byte to `HELMQ_DLQ` with why, how often it was tried and
//! where it came from in headers, so it can be inspected and replayed unchanged.
//!
//! The dead-letter subject is `helmq.dlq.` followed by the original subject without its
//! `helmq.` prefix (`helmq.jobs.ns.web` → `helmq.dlq.jobs.ns.web`). The dedupe id is the source
//! stream and sequence, so a message is dead-lettered once even if the process dies between
//! recording it and terminating the original.
//!
//! What an operator does with them (`helmqctl dlq`) lives here too: [`list`], [`get`],
//! [`replay`] (back to the original subject, then out of the DLQ), [`purge`] and
//! [`purge_all`].

use async_nats::HeaderMap;
use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use helmq_schemas::subject::DLQ_PREFIX;

use crate::publish::PublishError;
use crate::topology::DLQ_STREAM;
use crate::{RequestError, request};

/// Errors reading, replaying or deleting dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A JetStream request failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No dead letter at that sequence.
    #[error("no dead letter at sequence {sequence} in {DLQ_STREAM} (see `helmqctl dlq list`)")]
    NotFound {
        /// The sequence asked for.
        sequence: u64,
        /// What the server said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The dead letter does not say where it came from, so it cannot go back.
    #[error("cannot replay dead letter {0}: it records no original subject")]
    NoSubject(u64),
}

/// Header: why the message was dead-lettered.
pub const REASON_HEADER: &str = "Helmq-Dlq-Reason";
/// Header: deliveries made before giving up.
pub const ATTEMPTS_HEADER: &str = "Helmq-Dlq-Attempts";
/// Header: the subject the message was originally published to.
pub const SUBJECT_HEADER: &str = "Helmq-Dlq-Subject";
/// Header: the stream the message came from.
pub const STREAM_HEADER: &str = "Helmq-Dlq-Stream";
/// Header: its sequence in that stream.
pub const SEQUENCE_HEADER: &str = "Helmq-Dlq-Sequence";
/// Header: when it was dead-lettered (RFC 3339).
pub const AT_HEADER: &str = "Helmq-Dlq-At";

/// Longest reason kept in a header.
const MAX_REASON: usize = 4096;

/// A message to dead-letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The original payload, unchanged.
    pub payload: Bytes,
    /// The subject it was published to.
    pub subject: String,
    /// The stream it came from.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// Deliveries made.
    pub attempts: u64,
    /// Why it is dead.
    pub reason: String,
}

impl DeadLetter {
    /// The dead letter of a message taken from `stream` at `sequence` (delivered by a consumer or
    /// read by sequence): its subject and payload unchanged, how often it was delivered and why
    /// it is dead.
    pub fn of(
        subject: &str,
        payload: Bytes,
        (stream, sequence): (&str, u64),
        attempts: u64,
        reason: impl Into<String>,
    ) -> DeadLetter {
        DeadLetter {
            payload,
            subject: subject.to_owned(),
            stream: stream.to_owned(),
            sequence,
            attempts,
            reason: reason.into(),
        }
    }
}

/// A dead letter as read back from `HELMQ_DLQ`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Sequence in `HELMQ_DLQ`.
    pub dlq_sequence: u64,
    /// What was dead-lettered: the original message, where it came from and why.
    pub letter: DeadLetter,
    /// When it was dead-lettered; `None` when the header is missing or unreadable.
    pub at: Option<jiff::Timestamp>,
}

/// The dead-letter subject of an original subject.
pub fn dlq_subject_for(original: &str) -> String {
    let tail = original.strip_prefix("helmq.").unwrap_or(original);
    format!("{DLQ_PREFIX}.{tail}")
}

/// Headers cannot hold line breaks; long reasons are cut at a character boundary.
fn header_safe(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.len() <= MAX_REASON {
        return flat;
    }
    let mut end = MAX_REASON;
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &flat[..end])
}

/// Records `letter` in `HELMQ_DLQ` and waits for the server to store it.
pub async fn dead_letter(js: &Context, letter: &DeadLetter) -> Result<(), PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(REASON_HEADER, header_safe(&letter.reason).as_str());
    headers.insert(ATTEMPTS_HEADER, letter.attempts.to_string().as_str());
    headers.insert(SUBJECT_HEADER, letter.subject.as_str());
    headers.insert(STREAM_HEADER, letter.stream.as_str());
    headers.insert(SEQUENCE_HEADER, letter.sequence.to_string().as_str());
    headers.insert(AT_HEADER, jiff::Timestamp::now().to_string().as_str());
    let message = PublishMessage::build()
        .payload(letter.payload.clone())
        .headers(headers)
        .message_id(format!("dlq:{}:{}", letter.stream, letter.sequence))
        .expected_stream(DLQ_STREAM);
    let id = format!("{}#{}", letter.stream, letter.sequence);
    crate::publish::send(
        js,
        dlq_subject_for(&letter.subject),
        message,
        &id,
        DLQ_STREAM,
    )
    .await?;
    Ok(())
}

/// Reads the dead letter stored at `dlq_sequence`.
pub fn read_stored(
    dlq_sequence: u64,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> StoredDeadLetter {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    StoredDeadLetter {
        dlq_sequence,
        letter: DeadLetter {
            payload,
            subject: get(SUBJECT_HEADER),
            stream: get(STREAM_HEADER),
            sequence: get(SEQUENCE_HEADER).parse().unwrap_or(0),
            attempts: get(ATTEMPTS_HEADER).parse().unwrap_or(0),
            reason: get(REASON_HEADER),
        },
        at: get(AT_HEADER).parse().ok(),
    }
}

/// What [`replay`] did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Its sequence in `HELMQ_DLQ` (now deleted).
    pub dlq_sequence: u64,
    /// The subject it was published back to.
    pub subject: String,
    /// Its new sequence in the stream of that subject.
    pub stream_sequence: u64,
}

async fn dlq_stream(js: &Context) -> Result<async_nats::jetstream::stream::Stream, DlqError> {
    Ok(js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(request("open the dead-letter stream"))?)
}

/// Maps the failure to find `sequence` to [`DlqError::NotFound`].
fn not_found<E>(sequence: u64) -> impl FnOnce(E) -> DlqError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| DlqError::NotFound {
        sequence,
        source: Box::new(source),
    }
}

/// The dead letters in `HELMQ_DLQ`, oldest first, at most `limit`.
pub async fn list(js: &Context, limit: usize) -> Result<Vec<StoredDeadLetter>, DlqError> {
    let mut stream = dlq_stream(js).await?;
    let state = stream
        .info()
        .await
        .map_err(request("read the dead-letter stream"))?
        .state
        .clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if letters.len() >= limit {
            break;
        }
        // Deleted sequences (replayed or purged one by one) leave gaps.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            letters.push(read_stored(
                sequence,
                Some(&message.headers),
                message.payload,
            ));
        }
    }
    Ok(letters)
}

/// The dead letter at `sequence` in `HELMQ_DLQ`.
pub async fn get(js: &Context, sequence: u64) -> Result<StoredDeadLetter, DlqError> {
    let message = dlq_stream(js)
        .await?
        .get_raw_message(sequence)
        .await
        .map_err(not_found(sequence))?;
    Ok(read_stored(
        sequence,
        Some(&message.headers),
        message.payload,
    ))
}

/// Publishes the dead letter at `sequence` back to its original subject, unchanged, then
/// deletes it from `HELMQ_DLQ`.
pub async fn replay(js: &Context, sequence: u64) -> Result<Replayed, DlqError> {
    let letter = get(js, sequence).await?.letter;
    if letter.subject.is_empty() {
        return Err(DlqError::NoSubject(sequence));
    }
    // A fresh id: the original dedupe id may still be inside the duplicate window.
    let message = PublishMessage::build()
        .payload(letter.payload.clone())
        .message_id(format!("replay:{sequence}:{}", jiff::Timestamp::now()));
    let action = format!("replay dead letter {sequence}");
    let ack = js
        .send_publish(letter.subject.clone(), message)
        .await
        .map_err(request(action.clone()))?
        .await
        .map_err(request(action))?;
    dlq_stream(js)
        .await?
        .delete_message(sequence)
        .await
        .map_err(request(format!("remove replayed dead letter {sequence}")))?;
    Ok(Replayed {
        dlq_sequence: sequence,
        subject: letter.subject,
        stream_sequence: ack.sequence,
    })
}

/// Deletes the dead letters at `sequences`, in order; the count deleted. Stops at the first
/// sequence that holds none.
pub async fn purge(js: &Context, sequences: &[u64]) -> Result<u64, DlqError> {
    let stream = dlq_stream(js).await?;
    let mut purged = 0;
    for &sequence in sequences {
        stream
            .delete_message(sequence)
            .await
            .map_err(not_found(sequence))?;
        purged += 1;
    }
    Ok(purged)
}

/// Deletes every dead letter; the count deleted.
pub async fn purge_all(js: &Context) -> Result<u64, DlqError> {
    Ok(dlq_stream(js)
        .await?
        .purge()
        .await
        .map_err(request("purge the dead-letter stream"))?
        .purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_subjects_mirror_the_original() {
        assert_eq!(
            dlq_subject_for("helmq.jobs.ns.web"),
            "helmq.dlq.jobs.ns.web"
        );
        assert_eq!(
            dlq_subject_for("helmq.status.ns.web"),
            "helmq.dlq.status.ns.web"
        );
    }

    #[test]
    fn reasons_fit_in_a_header() {
        assert_eq!(header_safe("line one\nline two\r"), "line one line two ");
        let long = "é".repeat(MAX_REASON);
        let cut = header_safe(&long);
        assert!(cut.len() <= MAX_REASON + "…".len());
        assert!(cut.ends_with('…'));
    }
}
