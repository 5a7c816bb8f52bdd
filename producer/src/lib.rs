//! The Kubernetes side of helmq: the Component watcher that claims Components and publishes
//! jobs, the status writer, and the operator CLI `helmqctl`.

pub mod ctl;
