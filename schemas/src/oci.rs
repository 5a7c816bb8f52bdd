//! OCI chart references, `oci://registry[:port]/path/chart:tag`: the one parser behind the
//! config's validation, the chart name and version shown for a config, the registry a worker
//! logs in to and the reference and version it hands to `helm pull`.

/// The scheme every OCI chart reference starts with.
pub const PREFIX: &str = "oci://";

/// A well-formed OCI chart reference, borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference<'a> {
    repository: &'a str,
    registry: &'a str,
    name: &'a str,
    tag: &'a str,
}

/// Why a text is not an OCI chart reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// It does not start with `oci://`.
    #[error("must start with oci://")]
    Prefix,
    /// It names no registry or no chart path, or holds white space.
    #[error("must name a registry and a chart path (oci://registry/path/chart:version)")]
    Path,
    /// Its last path segment has no `:version` tag (digests are not supported).
    #[error("must end with a version tag (oci://registry/path/chart:version)")]
    Tag,
}

impl<'a> Reference<'a> {
    /// Parses `oci://registry[:port]/path/chart:tag`. The registry must not start with `-` (it
    /// reaches `helm registry login` as an argument), no path segment may be empty, and the tag
    /// is a version: a digest (`chart@sha256:…`) is refused.
    ///
    /// # Errors
    ///
    /// A [`ReferenceError`] saying which part is wrong.
    pub fn parse(reference: &'a str) -> Result<Reference<'a>, ReferenceError> {
        let rest = reference
            .strip_prefix(PREFIX)
            .ok_or(ReferenceError::Prefix)?;
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Path);
        }
        let (registry, path) = rest.split_once('/').ok_or(ReferenceError::Path)?;
        if registry.is_empty() || registry.starts_with('-') || path.split('/').any(str::is_empty) {
            return Err(ReferenceError::Path);
        }
        let last = path.rsplit_once('/').map_or(path, |(_, last)| last);
        if last.contains('@') {
            return Err(ReferenceError::Tag);
        }
        let (name, tag) = last.split_once(':').ok_or(ReferenceError::Tag)?;
        if name.is_empty() {
            return Err(ReferenceError::Path);
        }
        if tag.is_empty() || tag.contains(':') {
            return Err(ReferenceError::Tag);
        }
        Ok(Reference {
            repository: &reference[..reference.len() - tag.len() - 1],
            registry,
            name,
            tag,
        })
    }

    /// The registry, `host` or `host:port`.
    #[must_use]
    pub fn registry(&self) -> &'a str {
        self.registry
    }

    /// The reference without its tag, `oci://registry/path/chart` (what `helm pull` takes).
    #[must_use]
    pub fn repository(&self) -> &'a str {
        self.repository
    }

    /// The chart name: the last path segment without the tag.
    #[must_use]
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The version tag.
    #[must_use]
    pub fn tag(&self) -> &'a str {
        self.tag
    }
}

/// Chart name and tag of a reference, for display; a malformed reference never fails: its last
/// path segment and an empty tag.
#[must_use]
pub fn name_and_tag(reference: &str) -> (&str, &str) {
    match Reference::parse(reference) {
        Ok(parsed) => (parsed.name, parsed.tag),
        Err(_) => {
            let rest = reference.strip_prefix(PREFIX).unwrap_or(reference);
            (rest.rsplit_once('/').map_or(rest, |(_, last)| last), "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_name_and_tag() {
        let cases = [
            (
                "oci://registry-1.docker.io/bitnamicharts/nginx:18.2.4",
                "registry-1.docker.io",
                "oci://registry-1.docker.io/bitnamicharts/nginx",
                "nginx",
                "18.2.4",
            ),
            (
                "oci://localhost:5000/charts/app:1.0.0",
                "localhost:5000",
                "oci://localhost:5000/charts/app",
                "app",
                "1.0.0",
            ),
            (
                "oci://ghcr.io/org/team/charts/api:2.3.4-rc.1",
                "ghcr.io",
                "oci://ghcr.io/org/team/charts/api",
                "api",
                "2.3.4-rc.1",
            ),
            ("oci://ghcr.io/c:1", "ghcr.io", "oci://ghcr.io/c", "c", "1"),
        ];
        for (text, registry, repository, name, tag) in cases {
            let parsed = Reference::parse(text).expect(text);
            assert_eq!(
                (
                    parsed.registry(),
                    parsed.repository(),
                    parsed.name(),
                    parsed.tag()
                ),
                (registry, repository, name, tag),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        use ReferenceError::{Path, Prefix, Tag};
        let cases = [
            ("", Prefix),
            ("registry-1.docker.io/bitnamicharts/nginx:18.2.4", Prefix),
            ("https://h/x:1", Prefix),
            ("oci://host", Path),
            ("oci://registry-1.docker.io", Path),
            ("oci://localhost:5000/", Path),
            ("oci:///x:1", Path),
            ("oci://h//x:1", Path),
            ("oci://h/x/:1", Path),
            ("oci://h/:1", Path),
            ("oci://--help/x:1", Path),
            ("oci://h/x y:1", Path),
            ("oci://h/charts/app", Tag),
            ("oci://h/charts/app:", Tag),
            ("oci://h/charts/app:1:2", Tag),
            ("oci://h/charts/nginx@sha256:0123abcd", Tag),
        ];
        for (text, want) in cases {
            assert_eq!(Reference::parse(text), Err(want), "{text}");
        }
        assert_eq!(
            Tag.to_string(),
            "must end with a version tag (oci://registry/path/chart:version)"
        );
    }

    #[test]
    fn display_names_never_fail() {
        assert_eq!(
            name_and_tag("oci://localhost:5000/charts/app:1.0.0"),
            ("app", "1.0.0")
        );
        assert_eq!(name_and_tag("oci://localhost:5000/charts/app"), ("app", ""));
        assert_eq!(name_and_tag("app"), ("app", ""));
        assert_eq!(name_and_tag(""), ("", ""));
    }
}
