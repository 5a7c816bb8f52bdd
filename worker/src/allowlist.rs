//! Which chart sources and release namespaces a worker accepts, as pure functions.
//!
//! Sources are compared as parsed URLs, never as strings: the scheme, the host (case-insensitive)
//! and the port (default ports filled in) must be equal, the source may carry no userinfo, and an
//! allowed path is a prefix of whole segments. A source whose raw text holds a `.` or `..`
//! segment, a percent-encoded dot or slash (`%2e`, `%2f`), a backslash, a query or a fragment is
//! refused before it is compared: a URL parser would normalise such a path into something other
//! than what the text seems to say (`https://charts.example.com/team-a/../team-b` is in
//! `team-b`), and a server may decode it differently again. OCI references go through the one
//! parser, [`helmq_schemas::oci::Reference`]; `oci://host/path` compares like a URL whose
//! default port is 443.
//!
//! What an allowed HTTP repository is trusted with: helm reads the repository's `index.yaml`
//! and downloads the chart archive from the URL the index names for that version, which may be
//! on any host (an absolute URL in `urls:`). helmq does not resolve the index itself; allowing a
//! repository means trusting whoever controls its index to point only at archives you accept.

use helmq_schemas::ChartSource;
use helmq_schemas::oci::Reference;
use url::Url;

/// Allowed chart sources and release namespaces. The binary always builds it from explicit
/// flags: lists, or "any" only when the operator says so (`--allow-any-source`,
/// `--allow-any-namespace`).
#[derive(Debug, Clone, PartialEq)]
pub struct Allowlist {
    /// Allowed source prefixes; `None`: any source.
    sources: Option<Vec<Location>>,
    /// The prefixes as given, for messages.
    source_texts: Vec<String>,
    /// Allowed release namespaces; `None`: any namespace.
    namespaces: Option<Vec<String>>,
}

/// A chart source to check: an HTTP(S) repository URL or an OCI chart reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// `repository.url` of the HTTP form.
    Repository(&'a str),
    /// `oci://registry/path/chart:version`.
    Oci(&'a str),
}

impl<'a> Source<'a> {
    /// The source of a Helm config.
    pub fn of(source: &'a ChartSource) -> Source<'a> {
        match source {
            ChartSource::Http { repository, .. } => Source::Repository(&repository.url),
            ChartSource::Oci { chart, .. } => Source::Oci(chart),
        }
    }

    fn text(self) -> &'a str {
        match self {
            Source::Repository(text) | Source::Oci(text) => text,
        }
    }
}

/// Why a source, a namespace or an allowlist entry is refused. Each says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL or OCI reference at all.
    #[error("chart source {source_text:?} is not a valid URL: {reason}")]
    Unparsable {
        /// The text.
        source_text: String,
        /// What the parser said.
        reason: String,
    },
    /// `user:password@` in the URL.
    #[error("chart source {0:?} must not carry userinfo (user:password@)")]
    Userinfo(String),
    /// `.`/`..` segments, percent-encoded dots or slashes, backslashes.
    #[error(
        "chart source {0:?} must not hold '.' or '..' path segments, percent-encoded dots or slashes (%2e, %2f) or backslashes"
    )]
    AmbiguousPath(String),
    /// A query or a fragment.
    #[error("chart source {0:?} must not have a query or a fragment")]
    QueryOrFragment(String),
    /// A scheme other than http, https or oci.
    #[error("chart source {0:?} must be an http, https or oci URL")]
    Scheme(String),
    /// Well-formed, but under no allowed prefix.
    #[error("chart source {chart_source} is not allowed (allowed sources: {allowed})")]
    NotAllowed {
        /// The repository URL or OCI reference.
        chart_source: String,
        /// The allowed prefixes.
        allowed: String,
    },
    /// The release namespace is not allowed.
    #[error("release namespace {namespace} is not allowed (allowed namespaces: {allowed})")]
    Namespace {
        /// The release namespace.
        namespace: String,
        /// The allowed namespaces.
        allowed: String,
    },
    /// A list missing without its "any" flag (the worker does not start).
    #[error("no {list} given: name the allowed ones, or pass {any} to allow any (not recommended)")]
    Missing {
        /// The list flag.
        list: &'static str,
        /// The flag that allows any.
        any: &'static str,
    },
    /// An allowlist entry that is not a prefix helmq can compare with.
    #[error("--allowed-sources entry {entry:?} is invalid: {reason}")]
    Entry {
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
}

/// A parsed source or prefix: what is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    scheme: String,
    host: String,
    port: u16,
    /// Path segments without empty ones at the end.
    segments: Vec<String>,
}

impl Location {
    /// Parses a URL (`http`, `https`, `oci`), refusing userinfo, queries, fragments and any path
    /// whose meaning a normalisation would change.
    fn parse(text: &str) -> Result<Location, Refusal> {
        let lower = text.to_ascii_lowercase();
        if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
            return Err(Refusal::AmbiguousPath(text.to_owned()));
        }
        if text.contains('\\') || raw_path(text).split('/').any(|s| s == "." || s == "..") {
            return Err(Refusal::AmbiguousPath(text.to_owned()));
        }
        let url = Url::parse(text).map_err(|e| Refusal::Unparsable {
            source_text: text.to_owned(),
            reason: e.to_string(),
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Userinfo(text.to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Refusal::QueryOrFragment(text.to_owned()));
        }
        let scheme = url.scheme().to_owned();
        let port = match (url.port(), scheme.as_str()) {
            (Some(port), _) => port,
            (None, "http") => 80,
            (None, "https" | "oci") => 443,
            (None, _) => return Err(Refusal::Scheme(text.to_owned())),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Refusal::Unparsable {
                source_text: text.to_owned(),
                reason: "no host".into(),
            })?
            .to_ascii_lowercase();
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|s| s.map(str::to_owned).collect())
            .unwrap_or_default();
        while segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        Ok(Location {
            scheme,
            host,
            port,
            segments,
        })
    }

    /// True when `self` (a prefix) admits `source`: same scheme, host and port, and the prefix's
    /// segments are the source's first segments.
    fn admits(&self, source: &Location) -> bool {
        self.scheme == source.scheme
            && self.host == source.host
            && self.port == source.port
            && source.segments.len() >= self.segments.len()
            && self
                .segments
                .iter()
                .zip(&source.segments)
                .all(|(a, b)| a == b)
    }
}

/// The path part of a URL's raw text (after `scheme://authority`), for the dot-segment check.
fn raw_path(text: &str) -> &str {
    let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Parses a source for comparison: a repository URL as it is, an OCI reference through
/// [`Reference`] (its repository, without the tag).
fn locate(source: Source<'_>) -> Result<Location, Refusal> {
    match source {
        Source::Repository(url) => {
            let location = Location::parse(url)?;
            if location.scheme == "http" || location.scheme == "https" {
                Ok(location)
            } else {
                Err(Refusal::Scheme(url.to_owned()))
            }
        }
        Source::Oci(reference) => {
            let parsed = Reference::parse(reference).map_err(|e| Refusal::Unparsable {
                source_text: reference.to_owned(),
                reason: e.to_string(),
            })?;
            Location::parse(parsed.repository()).map_err(|e| match e {
                // Report the whole reference, not its repository part.
                Refusal::AmbiguousPath(_) => Refusal::AmbiguousPath(reference.to_owned()),
                Refusal::Userinfo(_) => Refusal::Userinfo(reference.to_owned()),
                other => other,
            })
        }
    }
}

impl Allowlist {
    /// Allows every source and every namespace (what `--allow-any-source
    /// --allow-any-namespace` asks for; tests use it too).
    pub fn any() -> Allowlist {
        Allowlist {
            sources: None,
            source_texts: Vec::new(),
            namespaces: None,
        }
    }

    /// An allowlist of source prefixes (`None`: any) and namespaces (`None`: any).
    ///
    /// # Errors
    ///
    /// [`Refusal::Entry`] for a prefix that is not an `http`, `https` or `oci` URL with a host, or
    /// that holds what a source may not (userinfo, dot segments, encoded dots or slashes).
    pub fn new<S: AsRef<str>, N: AsRef<str>>(
        sources: Option<&[S]>,
        namespaces: Option<&[N]>,
    ) -> Result<Allowlist, Refusal> {
        let (sources, source_texts) = match sources {
            None => (None, Vec::new()),
            Some(list) => {
                let mut parsed = Vec::new();
                let mut texts = Vec::new();
                for entry in list
                    .iter()
                    .map(|s| s.as_ref().trim())
                    .filter(|s| !s.is_empty())
                {
                    let location = Location::parse(entry).map_err(|e| Refusal::Entry {
                        entry: entry.to_owned(),
                        reason: e.to_string(),
                    })?;
                    parsed.push(location);
                    texts.push(entry.to_owned());
                }
                (Some(parsed), texts)
            }
        };
        let namespaces = namespaces.map(|list| {
            list.iter()
                .map(|n| n.as_ref().trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        });
        Ok(Allowlist {
            sources,
            source_texts,
            namespaces,
        })
    }

    /// True when any source is allowed.
    pub fn any_source(&self) -> bool {
        self.sources.is_none()
    }

    /// True when any namespace is allowed.
    pub fn any_namespace(&self) -> bool {
        self.namespaces.is_none()
    }

    /// Checks a job's chart source and release namespace.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] saying which rule the config breaks.
    pub fn check(&self, config: &helmq_schemas::HelmConfig) -> Result<(), Refusal> {
        source_allowed(self, &Source::of(&config.source))?;
        namespace_allowed(self, &config.release_namespace)
    }
}

/// Whether `source` is under one of the allowlist's prefixes. A malformed or ambiguous source
/// is refused even when any source is allowed: it would not mean what it says.
///
/// # Errors
///
/// The [`Refusal`] naming the rule: userinfo, an ambiguous path, a query, a scheme, or no
/// matching prefix.
pub fn source_allowed(allowlist: &Allowlist, source: &Source<'_>) -> Result<(), Refusal> {
    let location = locate(*source)?;
    match &allowlist.sources {
        None => Ok(()),
        Some(prefixes) if prefixes.iter().any(|p| p.admits(&location)) => Ok(()),
        Some(_) => Err(Refusal::NotAllowed {
            chart_source: source.text().to_owned(),
            allowed: allowlist.source_texts.join(", "),
        }),
    }
}

/// Whether a release namespace is allowed (exact names).
///
/// # Errors
///
/// [`Refusal::Namespace`] when it is not.
pub fn namespace_allowed(allowlist: &Allowlist, namespace: &str) -> Result<(), Refusal> {
    match &allowlist.namespaces {
        Some(list) if !list.iter().any(|n| n == namespace) => Err(Refusal::Namespace {
            namespace: namespace.to_owned(),
            allowed: list.join(", "),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(sources: &[&str]) -> Allowlist {
        Allowlist::new(Some(sources), Some(&["apps"])).unwrap()
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Ok,
        NotAllowed,
        Userinfo,
        Ambiguous,
        Query,
        Scheme,
        Unparsable,
    }

    fn verdict(result: Result<(), Refusal>) -> Want {
        match result {
            Ok(()) => Want::Ok,
            Err(Refusal::NotAllowed { .. }) => Want::NotAllowed,
            Err(Refusal::Userinfo(_)) => Want::Userinfo,
            Err(Refusal::AmbiguousPath(_)) => Want::Ambiguous,
            Err(Refusal::QueryOrFragment(_)) => Want::Query,
            Err(Refusal::Scheme(_)) => Want::Scheme,
            Err(Refusal::Unparsable { .. }) => Want::Unparsable,
            Err(other) => panic!("unexpected refusal {other}"),
        }
    }

    #[test]
    fn sources_match_on_parsed_urls() {
        use Source::{Oci, Repository};
        use Want::*;
        let allowed = list(&[
            "https://charts.example.com/team-a",
            "http://plain.example.com:8080/",
            "oci://registry.example.com/charts/",
        ]);
        let cases: &[(Source<'_>, Want)] = &[
            (Repository("https://charts.example.com/team-a"), Ok),
            (Repository("https://charts.example.com/team-a/"), Ok),
            (Repository("https://charts.example.com/team-a/stable"), Ok),
            (Repository("https://CHARTS.Example.COM/team-a"), Ok),
            (Repository("https://charts.example.com:443/team-a"), Ok),
            (Repository("http://plain.example.com:8080"), Ok),
            (Repository("http://plain.example.com:8080/any/path"), Ok),
            (Oci("oci://registry.example.com/charts/nginx:1.0.0"), Ok),
            (Oci("oci://Registry.Example.com:443/charts/x/y:2"), Ok),
            // The attacks of issue 12.
            (
                Repository("https://charts.example.com:x@evil.example/"),
                Userinfo,
            ),
            (
                Repository("https://charts.example.com:x@evil.example/team-a"),
                Userinfo,
            ),
            (
                Repository("https://user@charts.example.com/team-a"),
                Userinfo,
            ),
            (
                Repository("https://charts.example.com.evil.example/team-a"),
                NotAllowed,
            ),
            (
                Repository("https://charts.example.com/team-a/../team-b"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a/./x"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a/%2e%2e/team-b"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a/%2E%2E/team-b"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a%2F..%2Fteam-b"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a/..%2fteam-b"),
                Ambiguous,
            ),
            (
                Repository("https://charts.example.com/team-a\\..\\team-b"),
                Ambiguous,
            ),
            (
                Oci("oci://registry.example.com/charts/../private/x:1"),
                Ambiguous,
            ),
            (
                Oci("oci://user:pw@registry.example.com/charts/x:1"),
                Userinfo,
            ),
            // Segments are whole: team-a does not admit team-abc.
            (
                Repository("https://charts.example.com/team-abc"),
                NotAllowed,
            ),
            (Repository("https://charts.example.com/"), NotAllowed),
            (
                Repository("https://charts.example.com:8443/team-a"),
                NotAllowed,
            ),
            (Repository("http://charts.example.com/team-a"), NotAllowed),
            (Repository("http://plain.example.com/"), NotAllowed),
            (Repository("https://plain.example.com:8080/"), NotAllowed),
            (
                Oci("oci://registry.example.com:5000/charts/x:1"),
                NotAllowed,
            ),
            (Oci("oci://registry.example.com/other/x:1"), NotAllowed),
            (Oci("oci://registry.example.com/chartsx/x:1"), NotAllowed),
            (Repository("https://charts.example.com/team-a?x=1"), Query),
            (Repository("https://charts.example.com/team-a#x"), Query),
            (Repository("oci://registry.example.com/charts"), Scheme),
            (Repository("file:///etc/team-a"), Scheme),
            (Repository("not a url"), Unparsable),
            (Oci("oci://registry.example.com/charts/x"), Unparsable),
        ];
        for (source, want) in cases {
            assert_eq!(
                verdict(source_allowed(&allowed, source)),
                *want,
                "{source:?}"
            );
        }
    }

    #[test]
    fn any_source_still_refuses_ambiguous_sources() {
        let any = Allowlist::any();
        assert!(any.any_source() && any.any_namespace());
        assert_eq!(
            source_allowed(&any, &Source::Repository("https://anything.example/x")),
            Ok(())
        );
        assert!(matches!(
            source_allowed(&any, &Source::Repository("https://a:b@anything.example/")),
            Err(Refusal::Userinfo(_))
        ));
    }

    #[test]
    fn entries_must_be_prefixes_helmq_can_compare() {
        for (entry, rule) in [
            ("charts.example.com", "relative URL without a base"),
            ("https://u:p@charts.example.com/", "userinfo"),
            ("https://charts.example.com/a/../b", "percent-encoded dots"),
            ("ftp://charts.example.com/", "http, https or oci"),
        ] {
            let err = Allowlist::new(Some(&[entry]), None::<&[&str]>).unwrap_err();
            assert!(
                matches!(&err, Refusal::Entry { .. }) && err.to_string().contains(rule),
                "{entry}: {err}"
            );
        }
    }

    #[test]
    fn namespaces_are_exact_names() {
        let allowed = list(&["https://charts.example.com/"]);
        assert_eq!(namespace_allowed(&allowed, "apps"), Ok(()));
        assert_eq!(
            namespace_allowed(&allowed, "kube-system")
                .unwrap_err()
                .to_string(),
            "release namespace kube-system is not allowed (allowed namespaces: apps)"
        );
        assert_eq!(namespace_allowed(&Allowlist::any(), "kube-system"), Ok(()));
        assert_eq!(
            source_allowed(&allowed, &Source::Oci("oci://evil.io/x:1"))
                .unwrap_err()
                .to_string(),
            "chart source oci://evil.io/x:1 is not allowed (allowed sources: https://charts.example.com/)"
        );
    }
}
