//! Wire and API types shared by every helmq process, with no IO: the `Component` custom
//! resource, the Helm config carried in `spec.config`, the `JobEvent` and `StatusEvent`
//! messages and the subject names they travel on, and the checks of the names and references
//! they carry (DNS-1123 names, OCI chart references).
// No production function over 80 lines of code (clippy.toml); tests may be longer tables.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod component;
pub mod config;
pub mod dns;
pub mod event;
pub mod generate;
pub mod oci;
pub mod subject;

pub use component::{Component, ComponentSpec, ComponentStatus, Phase};
pub use config::{ChartSource, ConfigError, HelmConfig};
pub use event::{EventError, JobAction, JobEvent, StatusEvent, StatusPhase};
