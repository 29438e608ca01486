//! kchatd, the kchat daemon, as a library so its parts can be tested on the
//! host without the kernel: the config file, the state file, reconcile
//! planning, the kernel snapshot, the control socket and the metrics.

pub mod api;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod state;
