//! The systems the bench compares: kchat's engines and its peers.

pub mod iceoryx2;
pub mod kchat;
pub mod nats;
pub mod pipe;
pub mod redis;
