//! The systems the bench compares: kchat's engines and its peers.

pub mod kchat;
pub mod nats;
pub mod pipe;
pub mod redis;
