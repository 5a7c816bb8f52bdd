//! Subject names: one subject per Component on each stream, with a reversible token encoding
//! so that names holding `.` (allowed by Kubernetes) or any other character keep one key per
//! Component.
//!
//! Encoding: ASCII lowercase letters, digits and `-` stand for themselves; every other byte is
//! written as `_` followed by two upper-case hex digits (`.` → `_2E`, `_` → `_5F`). The result
//! only holds characters that are valid in both NATS subject tokens and KV keys.

use std::fmt::Write as _;

/// Subject prefix of the jobs stream.
pub const JOBS_PREFIX: &str = "helmq.jobs";
/// Subject prefix of the status stream.
pub const STATUS_PREFIX: &str = "helmq.status";
/// Subject prefix of the dead-letter stream.
pub const DLQ_PREFIX: &str = "helmq.dlq";

/// Errors decoding a subject or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// A subject that does not have the `<prefix>.<namespace>.<name>` shape.
    #[error("subject {0:?} is not of the form <prefix>.<namespace>.<name>")]
    Shape(String),
    /// A token with a bad escape sequence or bytes that are not UTF-8 once decoded.
    #[error("subject token {0:?} is not a valid helmq encoding")]
    Token(String),
}

/// Encodes one namespace or name into a subject token (never empty: `""` becomes `_`).
pub fn encode_token(raw: &str) -> String {
    if raw.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
    out
}

/// Reverses [`encode_token`].
pub fn decode_token(token: &str) -> Result<String, SubjectError> {
    if token == "_" {
        return Ok(String::new());
    }
    let bad = || SubjectError::Token(token.to_owned());
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hex = token.get(i + 1..i + 3).ok_or_else(bad)?;
            if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                return Err(bad());
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return Err(bad());
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `<prefix>.<namespace>.<name>`, both parts encoded.
pub fn component_subject(prefix: &str, namespace: &str, name: &str) -> String {
    format!(
        "{prefix}.{}.{}",
        encode_token(namespace),
        encode_token(name)
    )
}

/// The jobs subject of a Component.
pub fn job_subject(namespace: &str, name: &str) -> String {
    component_subject(JOBS_PREFIX, namespace, name)
}

/// The status subject of a Component.
pub fn status_subject(namespace: &str, name: &str) -> String {
    component_subject(STATUS_PREFIX, namespace, name)
}

/// Checks that a message about `namespace/name` arrived on `expected`, its own subject (the
/// subject is who may publish it: per-namespace permissions); the error names both. `what`
/// names the message (`job`, `status event`).
pub fn check_own_subject(
    what: &str,
    subject: &str,
    expected: &str,
    (namespace, name): (&str, &str),
) -> Result<(), String> {
    if subject == expected {
        Ok(())
    } else {
        Err(format!(
            "{what} for component {namespace}/{name} was published on subject {subject}, not on {expected}: a {what} must come on its component's subject"
        ))
    }
}

/// The dead-letter subject of a Component.
pub fn dlq_subject(namespace: &str, name: &str) -> String {
    component_subject(DLQ_PREFIX, namespace, name)
}

/// A subscription filter under `prefix`: one Component (`namespace` and `name`), every
/// Component of `namespace` (`<prefix>.<namespace>.*`), or everything (`<prefix>.>`, also when
/// only a name is given).
pub fn component_filter(prefix: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match (namespace, name) {
        (Some(namespace), Some(name)) => component_subject(prefix, namespace, name),
        (Some(namespace), None) => format!("{prefix}.{}.*", encode_token(namespace)),
        (None, _) => format!("{prefix}.>"),
    }
}

/// The filter of the status events of one Component, of one namespace, or of all.
pub fn status_filter(namespace: Option<&str>, name: Option<&str>) -> String {
    component_filter(STATUS_PREFIX, namespace, name)
}

/// The `(namespace, name)` a subject under `prefix` belongs to.
pub fn parse_component_subject(
    prefix: &str,
    subject: &str,
) -> Result<(String, String), SubjectError> {
    let shape = || SubjectError::Shape(subject.to_owned());
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(shape)?;
    let (ns, name) = rest.split_once('.').ok_or_else(shape)?;
    if name.contains('.') {
        return Err(shape());
    }
    Ok((decode_token(ns)?, decode_token(name)?))
}

/// A KV key for a Component (`<namespace>.<name>`, encoded), valid in every helmq bucket.
pub fn component_key(namespace: &str, name: &str) -> String {
    format!("{}.{}", encode_token(namespace), encode_token(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_and_odd_characters_round_trip() {
        let names = [
            "web",
            "my.app.v2",
            "a_b",
            "_",
            "",
            "UPPER",
            "sp ace",
            "star*gt>",
            "ünïcode",
            "x_2E",
            "-lead-",
        ];
        for name in names {
            let subject = job_subject("team-a", name);
            assert_eq!(subject.split('.').count(), 4, "{subject}");
            assert!(
                subject
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{subject}"
            );
            let (ns, back) = parse_component_subject(JOBS_PREFIX, &subject).unwrap();
            assert_eq!((ns.as_str(), back.as_str()), ("team-a", name));
        }
    }

    #[test]
    fn distinct_names_never_share_a_subject() {
        // `a.b` in namespace `x` and `b` in namespace `x.a` would collide under a naive join.
        assert_ne!(job_subject("x", "a.b"), job_subject("x.a", "b"));
        assert_ne!(encode_token("a.b"), encode_token("a_2Eb"));
        assert_eq!(encode_token("my.app"), "my_2Eapp");
    }

    #[test]
    fn malformed_subjects_and_tokens_are_rejected_with_the_reason() {
        assert_eq!(
            parse_component_subject(JOBS_PREFIX, "helmq.jobs.only")
                .unwrap_err()
                .to_string(),
            r#"subject "helmq.jobs.only" is not of the form <prefix>.<namespace>.<name>"#
        );
        assert!(parse_component_subject(JOBS_PREFIX, "helmq.status.a.b").is_err());
        assert!(parse_component_subject(JOBS_PREFIX, "helmq.jobs.a.b.c").is_err());
        for bad in ["a_", "a_2", "a_zz", "a_2e", "A", "a b", "_FF"] {
            assert_eq!(
                decode_token(bad),
                Err(SubjectError::Token(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn filters_cover_one_component_one_namespace_or_all() {
        assert_eq!(
            status_filter(Some("shop"), Some("my.api")),
            status_subject("shop", "my.api")
        );
        assert_eq!(status_filter(Some("a.b"), None), "helmq.status.a_2Eb.*");
        assert_eq!(status_filter(None, None), "helmq.status.>");
        assert_eq!(status_filter(None, Some("web")), "helmq.status.>");
        assert_eq!(component_filter(JOBS_PREFIX, None, None), "helmq.jobs.>");
    }

    #[test]
    fn component_keys_are_valid_kv_keys() {
        let key = component_key("ns", "my.app_1");
        assert_eq!(key, "ns.my_2Eapp_5F1");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        );
    }
}
