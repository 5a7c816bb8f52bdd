//! End-to-end suite against a real cluster and a real `helm` (Helm 3.14+ or 4). Gated by
//! `HELMQ_E2E=1` (each case says on its own line why it is skipped otherwise). Uses `KUBECONFIG`
//! and `HELM_BIN` (default `helm`); CI runs it on the test cluster of `../shared/rig`
//! (`just e2e-rig`). Every case but the chart's starts its own [`support::Stack`]: the charts of
//! `tests/fixtures/charts/` served as a chart repository on 127.0.0.1, a fresh `nats-server`,
//! the producer and the workers as `just up` runs them, and a namespace of its own.
//!
//! One module per theme: the Component lifecycle, failures and retries, a crashed worker, a
//! cancelled run (supersede, drain), day-2 configs (remediation, `helm test`), least privilege,
//! the documented examples, leader election, a Component too deep to decode, day-2 control
//! (suspend, resume, reconcile now), the Helm chart of helmq itself (`chart`), and the
//! scale run (`HELMQ_E2E_SCALE=N`, numbers in `target/bench/e2e-scale.json`).

mod support;

mod cancel;
mod chart;
mod control;
mod crash;
mod day2;
mod drift;
mod events;
mod examples;
mod failures;
mod leader;
mod lifecycle;
mod rbac;
mod recreate;
mod scale;
mod tenancy;
mod unreadable;
mod values_from;
