//! The chart cache shared by every job of a worker: charts are pulled once per (source, chart,
//! exact version, credentials) into `<cache>/charts/<key>/<chart>-<version>.tgz`, under a
//! per-key async lock, and installed from the package, so no repository index is downloaded or
//! parsed per job. A version range is pulled afresh for each job (it may resolve differently
//! tomorrow). A pull lands in a fresh directory that is renamed into place, so a crash mid-pull
//! never leaves a partial entry.
//!
//! The cache is bounded by size (`--chart-cache-max-bytes`): after each new entry, the least
//! recently used entries that no running job uses are deleted until the total fits
//! ([`evictions`] decides, [`CacheIndex`] keeps the sizes, uses and order). Entries found on
//! disk at start count too, oldest first; leftover pull directories are deleted.

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
use crate::ownership::Identity;

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

impl KeyLocks {
    /// The lock of `key` when no one holds or waits for it.
    fn try_lock(&self, key: &str) -> Option<KeyGuard<'_>> {
        let lock = self.map().entry(key.to_owned()).or_default().clone();
        let mut guard = KeyGuard {
            locks: self,
            key: key.to_owned(),
            lock,
            held: None,
        };
        guard.held = Some(guard.lock.clone().try_lock_owned().ok()?);
        Some(guard)
    }
}

/// One entry of the chart cache as eviction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CacheEntry {
    /// Its directory name (the cache key).
    pub(super) key: String,
    /// Bytes on disk.
    pub(super) size: u64,
    /// When it was last used, on the index's own clock (higher is newer).
    pub(super) last_used: u64,
    /// Jobs holding its package right now.
    pub(super) users: usize,
}

/// The keys to evict, least recently used first, so that the rest fits in `max` bytes; an
/// entry in use is never evicted (the total may then stay above `max` until it is released).
pub(super) fn evictions(entries: &[CacheEntry], max: u64) -> Vec<String> {
    let mut total = entries
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    let mut idle: Vec<&CacheEntry> = entries.iter().filter(|e| e.users == 0).collect();
    idle.sort_by_key(|e| (e.last_used, e.key.clone()));
    let mut out = Vec::new();
    for entry in idle {
        if total <= max {
            break;
        }
        total = total.saturating_sub(entry.size);
        out.push(entry.key.clone());
    }
    out
}

/// The sizes, last uses and users of the chart cache's entries.
#[derive(Debug, Default)]
pub(super) struct CacheIndex {
    inner: Arc<Mutex<IndexState>>,
}

#[derive(Debug, Default)]
struct IndexState {
    entries: HashMap<String, CacheEntry>,
    clock: u64,
}

/// A running job's use of a cache entry; the entry cannot be evicted while one is alive.
#[derive(Debug)]
pub(super) struct EntryUse {
    inner: Arc<Mutex<IndexState>>,
    key: String,
}

impl Drop for EntryUse {
    fn drop(&mut self) {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = state.entries.get_mut(&self.key) {
            entry.users = entry.users.saturating_sub(1);
        }
    }
}

impl CacheIndex {
    fn state(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of the entries in `charts` (oldest modified first); pull directories a crash
    /// left behind are deleted.
    pub(super) fn scan(charts: &Path) -> CacheIndex {
        let index = CacheIndex::default();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(charts).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".pull-") {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() || name.starts_with('.') {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            found.push((modified, name, dir_size(&path)));
        }
        found.sort();
        {
            let mut state = index.state();
            for (_, key, size) in found {
                state.clock += 1;
                let last_used = state.clock;
                state.entries.insert(
                    key.clone(),
                    CacheEntry {
                        key,
                        size,
                        last_used,
                        users: 0,
                    },
                );
            }
        }
        index
    }

    /// Records a use of `key` (of `size` bytes when it is not indexed yet) until the returned
    /// guard is dropped.
    pub(super) fn use_entry(&self, key: &str, size: impl FnOnce() -> u64) -> EntryUse {
        let mut state = self.state();
        state.clock += 1;
        let now = state.clock;
        let entry = state
            .entries
            .entry(key.to_owned())
            .or_insert_with(|| CacheEntry {
                key: key.to_owned(),
                size: size(),
                last_used: now,
                users: 0,
            });
        entry.last_used = now;
        entry.users += 1;
        EntryUse {
            inner: self.inner.clone(),
            key: key.to_owned(),
        }
    }

    /// The entries, for [`evictions`].
    fn entries(&self) -> Vec<CacheEntry> {
        self.state().entries.values().cloned().collect()
    }

    /// Forgets `key` if no one uses it; whether it did.
    fn forget_unused(&self, key: &str) -> bool {
        let mut state = self.state();
        if state.entries.get(key).is_some_and(|e| e.users == 0) {
            state.entries.remove(key);
            true
        } else {
            false
        }
    }

    /// Total bytes indexed.
    #[cfg(test)]
    fn total(&self) -> u64 {
        self.state().entries.values().map(|e| e.size).sum()
    }
}

/// Bytes of the files in `dir` (one level: an entry holds one package).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// A chart package ready to install; a fresh pull of a version range keeps its directory alive,
/// a cached one its entry in use.
#[derive(Debug)]
pub(super) struct ChartPackage {
    /// The `.tgz`.
    pub(super) path: PathBuf,
    _fresh: Option<tempfile::TempDir>,
    _use: Option<EntryUse>,
}

impl HelmCli {
    /// The package to install for `config`, pulled into the cache when it is not there yet
    /// (after a registry login when the source names credentials).
    pub(super) async fn chart(
        &self,
        config: &HelmConfig,
        own_namespace: &str,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<ChartPackage, DriverError> {
        // The Secret is resolved and checked first: it is part of the cache key.
        let secret = self.registry_secret(&config.source, own_namespace)?;
        let key = cache_key(&config.source, secret.as_ref());
        let pinned = is_exact_version(config.chart_version());
        let dir = self.settings.cache_dir.join("charts").join(&key);
        let guard = self.locks.lock(&key).await;
        if pinned && let Some(path) = find_package(&dir)? {
            let used = self.index.use_entry(&key, || dir_size(&dir));
            return Ok(ChartPackage {
                path,
                _fresh: None,
                _use: Some(used),
            });
        }
        let (fresh, pulled) = self
            .pull(&config.source, secret.as_ref(), identity, cancel)
            .await?;
        if !pinned {
            return Ok(ChartPackage {
                path: pulled,
                _fresh: Some(fresh),
                _use: None,
            });
        }
        let path = store(fresh, &dir)?;
        let used = self.index.use_entry(&key, || dir_size(&dir));
        // Eviction takes other keys' locks; this one's is no longer needed.
        drop(guard);
        self.evict();
        Ok(ChartPackage {
            path,
            _fresh: None,
            _use: Some(used),
        })
    }

    /// The registry Secret an OCI source names, resolved against the job's own namespace and
    /// checked against the allowed Secret namespaces; `None` for other sources.
    fn registry_secret(
        &self,
        source: &ChartSource,
        own_namespace: &str,
    ) -> Result<Option<SecretName>, DriverError> {
        let ChartSource::Oci {
            chart,
            authentication: Some(auth),
        } = source
        else {
            return Ok(None);
        };
        SecretName::resolve(
            auth,
            own_namespace,
            &self.settings.allowed_secret_namespaces,
        )
        .map(Some)
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
        })
    }

    /// `helm pull`s `source` into a fresh directory under the cache (after a registry login
    /// with `secret`, read as `identity`): the directory and the package in it.
    async fn pull(
        &self,
        source: &ChartSource,
        secret: Option<&SecretName>,
        identity: &Identity,
        cancel: &CancellationToken,
    ) -> Result<(tempfile::TempDir, PathBuf), DriverError> {
        let login = match (source, secret) {
            (ChartSource::Oci { chart, .. }, Some(secret)) => {
                Some(self.registry_login(chart, secret, identity, cancel).await?)
            }
            _ => None,
        };
        let registry_config = login
            .as_ref()
            .map(|login| login.dir.path().join("config.json"));
        let secrets: Vec<&[u8]> = login.iter().map(|l| l.password.as_slice()).collect();
        let fresh = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(self.settings.cache_dir.join("charts"))
            .map_err(|e| DriverError::local("cannot create a pull directory", e))?;
        self.helm_with(
            pull_args(source, fresh.path()),
            &Identity::Worker,
            registry_config.as_deref(),
            None,
            &secrets,
            self.settings.short_timeout,
            cancel,
        )
        .await
        .and_then(super::succeeded)?;
        drop(login);
        match find_package(fresh.path())? {
            Some(pulled) => Ok((fresh, pulled)),
            None => Err(DriverError::Output {
                command: "pull".into(),
                reason: OutputError::NoPackage,
            }),
        }
    }

    /// Deletes least recently used entries no job uses until the cache fits its bound. An
    /// entry whose key lock is busy is skipped: someone is about to use it.
    pub(super) fn evict(&self) {
        let charts = self.settings.cache_dir.join("charts");
        for key in evictions(&self.index.entries(), self.settings.chart_cache_max_bytes) {
            let Some(_lock) = self.locks.try_lock(&key) else {
                continue;
            };
            if self.index.forget_unused(&key) {
                tracing::info!(entry = %key, "chart cache over its bound; evicting its least recently used entry");
                let _ = std::fs::remove_dir_all(charts.join(&key));
            }
        }
    }
}

/// Moves a fresh pull into the cache entry `dir` and returns the package there. The move is
/// atomic: a crash mid-pull never leaves a partial cache entry.
fn store(fresh: tempfile::TempDir, dir: &Path) -> Result<PathBuf, DriverError> {
    let kept = fresh.keep();
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let stored = |e| DriverError::local(format!("cannot store the chart in {}", dir.display()), e);
    std::fs::rename(&kept, dir).map_err(stored)?;
    find_package(dir)?.ok_or_else(|| {
        stored(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the package vanished",
        ))
    })
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

    fn entry(key: &str, size: u64, last_used: u64, users: usize) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            size,
            last_used,
            users,
        }
    }

    #[test]
    fn the_least_recently_used_idle_entries_go_until_the_rest_fits() {
        let cases: &[(&[CacheEntry], u64, &[&str], &str)] = &[
            (&[], 10, &[], "an empty cache"),
            (
                &[entry("a", 4, 1, 0), entry("b", 4, 2, 0)],
                8,
                &[],
                "exactly at the bound",
            ),
            (
                &[
                    entry("b", 4, 2, 0),
                    entry("a", 4, 1, 0),
                    entry("c", 4, 3, 0),
                ],
                8,
                &["a"],
                "the oldest goes first",
            ),
            (
                &[
                    entry("a", 4, 1, 0),
                    entry("b", 4, 2, 0),
                    entry("c", 4, 3, 0),
                ],
                3,
                &["a", "b", "c"],
                "all, when even one is over the bound",
            ),
            (
                &[
                    entry("a", 4, 1, 1),
                    entry("b", 4, 2, 0),
                    entry("c", 4, 3, 0),
                ],
                8,
                &["b"],
                "one in use is skipped, the next oldest goes",
            ),
            (
                &[entry("a", 4, 1, 2), entry("b", 9, 2, 1)],
                1,
                &[],
                "entries in use stay even over the bound",
            ),
            (
                &[
                    entry("a", 1, 1, 0),
                    entry("b", 100, 2, 0),
                    entry("c", 1, 3, 0),
                ],
                50,
                &["a", "b"],
                "by age, not by size",
            ),
            (
                &[entry("a", u64::MAX, 1, 0), entry("b", 5, 2, 0)],
                10,
                &["a"],
                "sizes saturate",
            ),
        ];
        for (entries, max, want, why) in cases {
            assert_eq!(evictions(entries, *max), *want, "{why}");
        }
    }

    #[test]
    fn the_index_counts_entries_on_disk_uses_and_forgets_only_unused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let charts = dir.path();
        let put = |key: &str, size: usize| {
            std::fs::create_dir_all(charts.join(key)).unwrap();
            std::fs::write(charts.join(key).join("c-1.0.0.tgz"), vec![0; size]).unwrap();
        };
        put("old", 10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        put("new", 20);
        std::fs::create_dir_all(charts.join(".pull-leftover")).unwrap();
        let index = CacheIndex::scan(charts);
        assert!(
            !charts.join(".pull-leftover").exists(),
            "a crashed pull's leftovers go"
        );
        assert_eq!(index.total(), 30);
        assert_eq!(
            evictions(&index.entries(), 25),
            ["old"],
            "older on disk goes first"
        );
        // A use makes `old` the newest, and holds it.
        let used = index.use_entry("old", || unreachable!("indexed already"));
        assert_eq!(evictions(&index.entries(), 25), ["new"]);
        assert_eq!(evictions(&index.entries(), 0), ["new"], "old is in use");
        assert!(!index.forget_unused("old"));
        drop(used);
        assert!(index.forget_unused("old"));
        assert_eq!(index.total(), 20);
        let fresh = index.use_entry("third", || 7);
        assert_eq!(index.total(), 27);
        drop(fresh);
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
