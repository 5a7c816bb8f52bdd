//! The chart cache shared by every job of a worker: charts are pulled once per (source, chart,
//! exact version, credentials) into `<cache>/charts/<key>/<chart>-<version>.tgz`, under a
//! per-key async lock, and installed from the package, so no repository index is downloaded or
//! parsed per job. A version range is pulled afresh for each job (it may resolve differently
//! tomorrow). A pull lands in a fresh directory that is renamed into place, so a crash mid-pull
//! never leaves a partial entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use helmq_schemas::{ChartSource, HelmConfig, oci};
use tokio_util::sync::CancellationToken;

use super::HelmCli;
use super::args::pull_args;
use super::output::OutputError;
use super::registry::SecretName;
use crate::driver::DriverError;

/// One async lock per cache key: two jobs never pull the same chart at once. A key's entry
/// lives only while someone holds or waits for its lock, so the map does not grow with every
/// chart ever pulled.
#[derive(Debug, Default)]
pub(super) struct KeyLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A hold on (or a wait for) the lock of one key; dropping it releases the lock and removes
/// the key's entry when no one else holds or waits for it.
#[derive(Debug)]
pub(super) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// The map, even after a panic elsewhere: it cannot be left half-written.
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the lock of `key` and holds it until the guard is dropped.
    pub(super) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self.map().entry(key.to_owned()).or_default().clone();
        // Built before waiting: a wait that is given up (its future dropped) cleans up too.
        let mut guard = KeyGuard {
            locks: self,
            key: key.to_owned(),
            lock,
            held: None,
        };
        guard.held = Some(guard.lock.clone().lock_owned().await);
        guard
    }

    /// How many keys have an entry.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        // Every handle on an entry is cloned under the map's lock (or from a handle that is
        // still alive), so with the map locked a count of two (the map's and ours) means no
        // one else holds or waits for this key.
        let mut map = self.locks.map();
        self.held = None;
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// A chart package ready to install; a fresh pull of a version range keeps its directory alive.
#[derive(Debug)]
pub(super) struct ChartPackage {
    /// The `.tgz`.
    pub(super) path: PathBuf,
    _fresh: Option<tempfile::TempDir>,
}

impl HelmCli {
    /// The package to install for `config`, pulled into the cache when it is not there yet
    /// (after a registry login when the source names credentials).
    pub(super) async fn chart(
        &self,
        config: &HelmConfig,
        own_namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<ChartPackage, DriverError> {
        // The Secret is resolved and checked first: it is part of the cache key.
        let secret = match &config.source {
            ChartSource::Oci {
                chart,
                authentication: Some(auth),
            } => Some(
                SecretName::resolve(
                    auth,
                    own_namespace,
                    &self.settings.allowed_secret_namespaces,
                )
                .map_err(|reason| DriverError::RegistryCredentials {
                    registry: oci::Reference::parse(chart)
                        .map_or_else(|_| chart.clone(), |r| r.registry().to_owned()),
                    secret: format!(
                        "{}/{}",
                        auth.secret_ref
                            .namespace
                            .as_deref()
                            .filter(|ns| !ns.trim().is_empty())
                            .unwrap_or(own_namespace),
                        auth.secret_ref.name
                    ),
                    reason,
                })?,
            ),
            _ => None,
        };
        let key = cache_key(&config.source, secret.as_ref());
        let pinned = is_exact_version(config.chart_version());
        let charts = self.settings.cache_dir.join("charts");
        let dir = charts.join(&key);
        let _guard = self.locks.lock(&key).await;
        if pinned && let Some(path) = find_package(&dir)? {
            return Ok(ChartPackage { path, _fresh: None });
        }
        let login = match (&config.source, &secret) {
            (ChartSource::Oci { chart, .. }, Some(secret)) => {
                Some(self.registry_login(chart, secret, cancel).await?)
            }
            _ => None,
        };
        let registry_config = login
            .as_ref()
            .map(|login| login.dir.path().join("config.json"));
        let secrets: Vec<&[u8]> = login.iter().map(|l| l.password.as_slice()).collect();
        let fresh = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(&charts)
            .map_err(|e| DriverError::local("cannot create a pull directory", e))?;
        self.helm_with(
            pull_args(&config.source, fresh.path()),
            registry_config.as_deref(),
            None,
            &secrets,
            self.settings.short_timeout,
            cancel,
        )
        .await?;
        drop(login);
        let Some(pulled) = find_package(fresh.path())? else {
            return Err(DriverError::Output {
                command: "pull".into(),
                reason: OutputError::NoPackage,
            });
        };
        if !pinned {
            return Ok(ChartPackage {
                path: pulled,
                _fresh: Some(fresh),
            });
        }
        // Publish the package atomically: a crash mid-pull never leaves a partial cache entry.
        let kept = fresh.keep();
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let stored =
            |e| DriverError::local(format!("cannot store the chart in {}", dir.display()), e);
        std::fs::rename(&kept, &dir).map_err(stored)?;
        let path = find_package(&dir)?.ok_or_else(|| {
            stored(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the package vanished",
            ))
        })?;
        Ok(ChartPackage { path, _fresh: None })
    }
}

/// The `.tgz` in `dir`, if any; a missing directory has none.
fn find_package(dir: &Path) -> Result<Option<PathBuf>, DriverError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DriverError::local(
                format!("cannot read {}", dir.display()),
                e,
            ));
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz")))
}

/// A chart version that always names the same package (no range, no wildcard).
pub(super) fn is_exact_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        && !version
            .trim_start_matches('v')
            .split(['.', '-', '+'])
            .take(3)
            .any(|part| matches!(part, "x" | "X"))
}

/// Cache directory name of a (source, chart, version, resolved Secret): readable and
/// filesystem-safe.
pub(super) fn cache_key(source: &ChartSource, secret: Option<&SecretName>) -> String {
    use sha2::Digest as _;
    // Parts are joined with NUL for the digest (no part can hold one) and with `-` for people.
    let (raw, credentials) = match source {
        ChartSource::Http { repository, chart } => (
            format!(
                "{}\0{}\0{}",
                repository.url.trim_end_matches('/'),
                chart.name,
                chart.version
            ),
            String::new(),
        ),
        // A chart pulled with credentials is cached apart from the same reference pulled with
        // another Secret (the one actually read: two tenants' bare `creds` are two Secrets) or
        // none: a cache hit must not bypass the registry.
        ChartSource::Oci { chart, .. } => (
            chart.clone(),
            secret.map_or_else(String::new, SecretName::to_string),
        ),
    };
    let readable: String = raw
        .replace('\0', "-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    // The readable part alone can collide (`/` and `_` map to the same character); the digest
    // of the exact source keeps one directory per source.
    let digest = sha2::Sha256::new()
        .chain_update(raw.as_bytes())
        .chain_update([0])
        .chain_update(credentials.as_bytes())
        .finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

#[cfg(test)]
mod tests {
    use helmq_schemas::config::{ChartRef, OciAuthentication, Repository, SecretRef};

    use super::*;

    fn http(url: &str, name: &str, version: &str) -> ChartSource {
        ChartSource::Http {
            repository: Repository {
                url: url.into(),
                name: "r".into(),
            },
            chart: ChartRef {
                name: name.into(),
                version: version.into(),
            },
        }
    }

    #[test]
    fn only_exact_versions_are_cached() {
        for exact in ["1.2.3", "v1.2.3", "1.2.3-rc.1", "1.2.3+build.7"] {
            assert!(is_exact_version(exact), "{exact}");
        }
        for range in [
            "",
            "^1.2",
            "~1.2.3",
            ">=1.0.0",
            "1.x",
            "1.2.*",
            "1.0 - 2.0",
            "*",
        ] {
            assert!(!is_exact_version(range), "{range}");
        }
    }

    #[test]
    fn keys_are_safe_stable_and_one_per_source() {
        let source = http("https://charts.example.com/stable/", "nginx", "15.4.2");
        let key = cache_key(&source, None);
        assert!(
            key.starts_with("https___charts.example.com_stable-nginx-15.4.2-"),
            "{key}"
        );
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
        assert_eq!(key, cache_key(&source, None), "stable");
        // Sources that read the same once sanitized still get their own directories.
        assert_ne!(
            cache_key(&http("https://x.example/a-b", "c", "1.0.0"), None),
            cache_key(&http("https://x.example/a", "b-c", "1.0.0"), None)
        );
        assert_ne!(
            cache_key(&http("https://x.example/a/b", "c", "1.0.0"), None),
            cache_key(&http("https://x.example/a_b", "c", "1.0.0"), None)
        );
        // The same OCI chart with and without credentials, or with another Secret, is cached
        // apart; the Secret that counts is the one resolved, so two tenants' bare `creds`
        // (attack: one served the other's private chart) get two entries.
        let auth = |namespace: Option<&str>| OciAuthentication {
            method: "registry".into(),
            secret_ref: SecretRef {
                name: "creds".into(),
                namespace: namespace.map(str::to_owned),
            },
        };
        let oci = ChartSource::Oci {
            chart: "oci://registry.example/charts/app:1.0.0".into(),
            authentication: Some(auth(None)),
        };
        let resolved = |own: &str, namespace: Option<&str>| {
            cache_key(
                &oci,
                Some(&SecretName::resolve(&auth(namespace), own, &[]).unwrap()),
            )
        };
        assert_ne!(cache_key(&oci, None), resolved("team-a", None));
        assert_ne!(resolved("team-a", None), resolved("team-b", None));
        assert_eq!(resolved("team-a", None), resolved("team-a", Some("team-a")));
    }

    #[test]
    fn a_missing_directory_holds_no_package() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_package(&dir.path().join("nope")).unwrap().is_none());
        assert!(find_package(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("nginx-1.2.3.tgz"), b"").unwrap();
        assert_eq!(
            find_package(dir.path()).unwrap(),
            Some(dir.path().join("nginx-1.2.3.tgz"))
        );
    }

    #[tokio::test]
    async fn key_locks_exclude_per_key_and_are_dropped_when_unused() {
        use std::time::Duration;

        let locks = KeyLocks::default();
        let a = locks.lock("a").await;
        let b = locks.lock("b").await;
        assert_eq!(locks.len(), 2);
        // A second job on key `a` waits, and giving up the wait leaves the entry to `a`.
        let gave_up = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(gave_up.is_err(), "key a is held");
        assert_eq!(locks.len(), 2);
        drop(b);
        assert_eq!(locks.len(), 1, "b is unused");
        let waiter = async {
            let again = locks.lock("a").await;
            assert!(Arc::ptr_eq(&again.lock, &a_lock(&locks)));
            drop(again);
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(locks.len(), 1, "a waiter keeps the entry");
            drop(a);
        };
        tokio::join!(waiter, release);
        assert_eq!(locks.len(), 0, "no one holds or waits");
        // A key can be locked again after its entry went.
        drop(locks.lock("a").await);
        assert_eq!(locks.len(), 0);
    }

    /// The entry of key `a`.
    fn a_lock(locks: &KeyLocks) -> Arc<tokio::sync::Mutex<()>> {
        locks.map().get("a").cloned().unwrap()
    }
}
