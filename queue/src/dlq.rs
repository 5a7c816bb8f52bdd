//! Dead letters: a message that cannot succeed (malformed, invalid, permanently failing or out
//! of attempts) is copied byte for byte to `HELMQ_DLQ` with why, how often it was tried and
//! where it came from in headers, so it can be inspected and replayed unchanged.
//!
//! The dead-letter subject is `helmq.dlq.` followed by the original subject without its
//! `helmq.` prefix (`helmq.jobs.ns.web` → `helmq.dlq.jobs.ns.web`). The dedupe id is the source
//! stream and sequence, so a message is dead-lettered once even if the process dies between
//! recording it and terminating the original.

use async_nats::HeaderMap;
use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use helmq_schemas::subject::DLQ_PREFIX;

use crate::publish::PublishError;
use crate::topology::DLQ_STREAM;

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
#[derive(Debug, Clone)]
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

/// A dead letter as read back from `HELMQ_DLQ`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Sequence in `HELMQ_DLQ`.
    pub dlq_sequence: u64,
    /// The original payload.
    pub payload: Bytes,
    /// The original subject.
    pub subject: String,
    /// Source stream.
    pub stream: String,
    /// Sequence in the source stream.
    pub sequence: u64,
    /// Deliveries made.
    pub attempts: u64,
    /// Why it is dead.
    pub reason: String,
    /// When it was dead-lettered.
    pub at: String,
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
        payload,
        subject: get(SUBJECT_HEADER),
        stream: get(STREAM_HEADER),
        sequence: get(SEQUENCE_HEADER).parse().unwrap_or(0),
        attempts: get(ATTEMPTS_HEADER).parse().unwrap_or(0),
        reason: get(REASON_HEADER),
        at: get(AT_HEADER),
    }
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
