//! [`BenchDriver`]: a [`HelmDriver`] with no state that answers every call at once, or after
//! a fixed delay per apply (the scaling phase's 200 ms Helm run). Unlike the tests'
//! `MemoryDriver` it keeps no call log, so a long run does not grow the worker's memory.
//! With a [`Probe`] it records when each apply starts and returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use helmq_schemas::config::ValuesKind;
use helmq_worker::drift::ObjectState;
use helmq_worker::driver::{
    Apply, DriverError, HelmDriver, HelmStatus, NamespaceDeletion, Release, Revision, Target, Tool,
    Uninstalled,
};
use helmq_worker::ownership::{Identity, Owner};
use helmq_worker::values::SourceData;
use tokio_util::sync::CancellationToken;

use crate::jobs::index_of;
use crate::probe::{Mark, Probe};

/// Helm in memory: every release is new, every apply succeeds after `delay`.
#[derive(Debug, Clone, Default)]
pub struct BenchDriver {
    delay: Duration,
    probe: Option<Arc<Probe>>,
}

impl BenchDriver {
    /// Applies take `delay` (zero: they return at once).
    pub fn new(delay: Duration) -> BenchDriver {
        BenchDriver { delay, probe: None }
    }

    /// Records each apply's start and end in `probe`.
    pub fn with_probe(mut self, probe: Arc<Probe>) -> BenchDriver {
        self.probe = Some(probe);
        self
    }

    fn mark(&self, release: &str, mark: Mark) {
        if let (Some(probe), Some(index)) = (&self.probe, index_of(release)) {
            probe.mark(index, mark);
        }
    }
}

impl HelmDriver for BenchDriver {
    fn grace(&self) -> Duration {
        Duration::ZERO
    }

    async fn apply(
        &self,
        request: Apply<'_>,
        cancel: &CancellationToken,
    ) -> Result<Release, DriverError> {
        let release = &request.config.release_name;
        self.mark(release, Mark::DriverCalled);
        if !self.delay.is_zero() {
            tokio::select! {
                () = cancel.cancelled() => return Err(DriverError::Cancelled {
                    tool: Tool::Helm,
                    command: "upgrade".into(),
                }),
                () = tokio::time::sleep(self.delay) => {}
            }
        }
        self.mark(release, Mark::DriverReturned);
        Ok(Release {
            revision: 1,
            status: HelmStatus::Deployed,
            chart_version: Some(request.config.chart_version().to_owned()),
        })
    }

    async fn uninstall(
        &self,
        _target: Target<'_>,
        _timeout: Duration,
        _cancel: &CancellationToken,
    ) -> Result<Uninstalled, DriverError> {
        Ok(Uninstalled::NotFound)
    }

    async fn status(
        &self,
        _target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Option<Release>, DriverError> {
        Ok(None)
    }

    async fn labels(
        &self,
        _target: Target<'_>,
        _revision: i64,
        _cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, String>, DriverError> {
        // Never asked: every release is new, so there is no record to read.
        Ok(BTreeMap::new())
    }

    async fn history(
        &self,
        _target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<Revision>, DriverError> {
        Ok(Vec::new())
    }

    async fn test(
        &self,
        _target: Target<'_>,
        _timeout: Duration,
        _cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    async fn rollback(
        &self,
        _target: Target<'_>,
        _revision: i64,
        _timeout: Duration,
        _cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    async fn values_source(
        &self,
        _kind: ValuesKind,
        _name: &str,
        _namespace: &str,
        _identity: &Identity,
        _cancel: &CancellationToken,
    ) -> Result<SourceData, DriverError> {
        // The benchmark's jobs carry their values inline.
        Ok(None)
    }

    async fn drift_states(
        &self,
        _target: Target<'_>,
        _cancel: &CancellationToken,
    ) -> Result<Vec<ObjectState>, DriverError> {
        // The benchmark's jobs ask for no drift checks.
        Ok(Vec::new())
    }

    async fn reapply(
        &self,
        _target: Target<'_>,
        _objects: &[serde_json::Value],
        _cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    async fn delete_namespace(
        &self,
        _namespace: &str,
        _identity: &Identity,
        _owner: &Owner,
        _cancel: &CancellationToken,
    ) -> Result<NamespaceDeletion, DriverError> {
        Ok(NamespaceDeletion::Deleted)
    }
}
