//! The pipeline the cross-crate tests drive: a real nats-server with the helmq topology, an
//! in-process worker pool (Helm in memory) and the status writer over the in-memory API server.

#![allow(dead_code, unreachable_pub)]

use helmq_producer::metrics::Metrics as ProducerMetrics;
use helmq_producer::store::fake::{FakeComponentStore, FakeEventStore};
use helmq_producer::writer::{WriterConfig, spawn_test_writer};
use helmq_queue::{JetStreamStatus, Topology};
use helmq_tests::NatsServer;
use helmq_worker::{MemoryDriver, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything started; [`Pipeline::stop`] drains the pool and the writer.
pub struct Pipeline {
    pub server: NatsServer,
    pub js: async_nats::jetstream::Context,
    pub store: FakeComponentStore,
    pub metrics: helmq_worker::Metrics,
    pub pool: helmq_worker::SpawnedPool,
    pub writer: JoinHandle<Result<(), helmq_producer::writer::WriterError>>,
    stop: CancellationToken,
}

impl Pipeline {
    /// Starts the server, the topology, a pool with `settings` over `driver`, and the writer.
    pub async fn start(driver: &MemoryDriver, settings: Settings) -> Pipeline {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        Topology::default().ensure(&js).await.unwrap();
        let pool = helmq_worker::SpawnedPool::spawn(
            client,
            driver.clone(),
            settings,
            JetStreamStatus::new,
        );
        let metrics = pool.metrics.clone();
        let stop = CancellationToken::new();
        let store = FakeComponentStore::new();
        let writer = spawn_test_writer(
            store.clone(),
            FakeEventStore::new(),
            js.clone(),
            WriterConfig::fast(),
            ProducerMetrics::default(),
            stop.clone(),
        );
        Pipeline {
            server,
            js,
            store,
            metrics,
            pool,
            writer,
            stop,
        }
    }
}

impl Pipeline {
    /// Stops the pool (draining it) and the writer.
    pub async fn stop(self) {
        self.stop.cancel();
        self.pool.stop().await;
        let _ = self.writer.await;
    }
}
