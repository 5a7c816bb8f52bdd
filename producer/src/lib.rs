//! The Kubernetes side of helmq: the Component watcher that claims Components and publishes
//! jobs, the status writer, and the operator CLI `helmqctl`.
//!
//! - [`plan`]: the producer's decisions (claim, apply, delete, resync) as a pure function;
//! - [`producer`]: the watch loop that carries them out;
//! - [`writer`]: the status writer (pure [`writer::apply`] plus its JetStream loop);
//! - [`store`]: the `ComponentStore` seam over the Kubernetes API, and its in-memory fake;
//! - [`app`], [`args`], [`metrics`]: wiring, command line, counters.

pub mod app;
pub mod args;
pub mod ctl;
pub mod metrics;
pub mod plan;
pub mod producer;
pub mod store;
pub mod writer;

pub use app::{AppError, run};
pub use args::{Args, Mode};
