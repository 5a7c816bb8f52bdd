//! DNS-1123 names, the shape Kubernetes gives namespaces and Secrets (and, with a shorter limit,
//! Helm gives releases): one check for every place such a name enters.

/// Longest DNS-1123 label (a namespace).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain (a Secret name).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, at most
/// 63 characters.
#[must_use]
pub fn is_label(name: &str) -> bool {
    name.len() <= MAX_LABEL_LEN && is_label_shaped(name)
}

/// A DNS-1123 subdomain: labels joined by `.`, at most 253 characters, as Kubernetes checks a
/// Secret's name. Such a name never starts with `-`, so it is never taken for a flag.
#[must_use]
pub fn is_subdomain(name: &str) -> bool {
    name.len() <= MAX_SUBDOMAIN_LEN && name.split('.').all(is_label_shaped)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without a length limit.
fn is_label_shaped(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alphanumeric(first)
                && alphanumeric(last)
                && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        let long_label = "a".repeat(MAX_LABEL_LEN);
        let too_long_label = "a".repeat(MAX_LABEL_LEN + 1);
        let long_subdomain = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long_subdomain.len(), MAX_SUBDOMAIN_LEN);
        let too_long_subdomain = format!("{long_subdomain}e");
        // (name, label, subdomain)
        let cases: &[(&str, bool, bool)] = &[
            ("a", true, true),
            ("creds", true, true),
            ("web-1", true, true),
            ("0day", true, true),
            ("registry.creds-1", false, true),
            (&long_label, true, true),
            (&too_long_label, false, true),
            (&long_subdomain, false, true),
            (&too_long_subdomain, false, false),
            ("", false, false),
            ("-n", false, false),
            ("--help", false, false),
            ("creds-", false, false),
            ("Creds", false, false),
            ("a_b", false, false),
            ("a/b", false, false),
            (".x", false, false),
            ("x.", false, false),
            ("a..b", false, false),
            ("a.-b", false, false),
            ("é", false, false),
        ];
        for (name, label, subdomain) in cases {
            assert_eq!(is_label(name), *label, "label {name}");
            assert_eq!(is_subdomain(name), *subdomain, "subdomain {name}");
        }
    }
}
