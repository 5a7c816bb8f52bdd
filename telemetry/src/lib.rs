//! Operations plumbing shared by the helmq binaries: tracing setup (text or JSON), the small
//! HTTP server for `/metrics`, `/healthz` and `/readyz`, the shutdown token that SIGTERM
//! and Ctrl-C cancel, the name this process goes by ([`instance_name`]), waiting between
//! attempts ([`retry`]), the flags the long-running binaries share ([`ServiceArgs`]), and
//! registering metrics from a table ([`register_all`]).
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod retry;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

/// The flags every long-running helmq process (producer, worker) shares: its NATS connection,
/// logging and the operations endpoint. Flattened into each binary's own `Args`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: helmq_queue::NatsArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// Operations endpoint.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Logging flags, shared by every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long = "log-json", env = "HELMQ_LOG_JSON")]
    pub json: bool,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,helmq_worker=debug`.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
}

/// Registers each `(name, help, metric)` in `registry`, in order: the order `/metrics` lists
/// them in.
pub fn register_all<'a, M: Metric + Clone>(
    registry: &mut Registry,
    metrics: impl IntoIterator<Item = (&'static str, &'static str, &'a M)>,
) {
    for (name, help, metric) in metrics {
        registry.register(name, help, metric.clone());
    }
}

/// Runs `check` now and then every `interval` until `shutdown`, marking `readiness` ready when
/// it passes and not ready, with the reason it gives, when it fails.
pub async fn keep_checking<F, Fut>(
    readiness: &Readiness,
    interval: std::time::Duration,
    shutdown: &CancellationToken,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        match check().await {
            Ok(()) => readiness.ready(),
            Err(reason) => readiness.not_ready(reason),
        }
        if !retry::pause(shutdown, interval).await {
            return;
        }
    }
}

/// Installs the global tracing subscriber described by `args`.
pub fn init_tracing(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if args.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Flags of the operations HTTP endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoint.
    #[arg(long = "listen", env = "HELMQ_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
}

/// Whether the process can do its work; `/readyz` answers from it.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<Result<(), String>>>,
    /// Set once part of the process stopped for good; outranks `state` from then on.
    broken: Arc<Mutex<Option<String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Arc::new(Mutex::new(Err("starting".into()))),
            broken: Arc::default(),
        }
    }
}

impl Readiness {
    /// Marks the process ready.
    pub fn ready(&self) {
        self.set(Ok(()));
    }

    /// Marks the process not ready, saying why.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    /// Marks the process not ready for good: part of it stopped and only a restart helps.
    /// Later [`ready`](Self::ready) calls do not clear it.
    pub fn broken(&self, reason: impl Into<String>) {
        *self.broken.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// The current state.
    pub fn get(&self) -> Result<(), String> {
        if let Some(reason) = &*self.broken.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(reason.clone());
        }
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, value: Result<(), String>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

/// This process's host name — in Kubernetes the pod's name: `$HOSTNAME`, else the kernel's
/// host name (`/proc/sys/kernel/hostname`, `/etc/hostname`), trimmed; `fallback` when none is
/// set.
pub fn instance_name(fallback: &str) -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The `/metrics`, `/healthz` and `/readyz` routes.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.get() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Serves the operations routes on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT); a second signal exits the process at once
/// (status 130), for an operator who no longer wants to wait for the drain.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut sigterm =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    None
                }
            };
        for round in 0..2 {
            let terminate = async {
                match sigterm.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = terminate => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
            if round == 0 {
                tracing::info!("shutting down; a second signal exits at once");
                token.cancel();
            }
        }
        tracing::warn!("second signal received, exiting at once");
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn the_instance_name_is_trimmed_and_never_empty() {
        let name = instance_name("fallback");
        assert!(!name.is_empty());
        assert_eq!(name, name.trim());
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("helmq_test_things", "things counted", counter.clone());
        counter.inc_by(3);
        let readiness = Readiness::default();
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(registry),
            readiness.clone(),
            shutdown.clone(),
        ));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("not ready: starting\n"), "{not_ready}");
        readiness.ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("helmq_test_things_total 3"), "{metrics}");

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
