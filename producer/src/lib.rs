//! The Kubernetes side of helmq: the Component watcher that claims Components and publishes
//! jobs, and the status writer.
//!
//! - [`plan`]: the producer's decisions (claim, apply, delete, resync) as a pure function;
//! - [`watcher`]: the watch loop that carries them out;
//! - [`leader`]: leader election on a Lease, which gates the watch loop across replicas;
//! - [`writer`]: the status writer (pure [`writer::apply()`] plus its JetStream loop);
//! - [`store`]: the `ComponentStore` and `LeaseStore` seams over the Kubernetes API, and
//!   their in-memory fakes (with the `testing` feature);
//! - [`app`], [`args`], [`metrics`]: wiring, command line, counters.
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod app;
pub mod args;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod store;
pub mod watcher;
pub mod writer;

pub use app::{AppError, run};
pub use args::{Args, Mode};
