//! What kchatd and kchatctl share: how a room is declared (the same in the
//! config file, the state file and an API request, validated while it is
//! parsed so errors point at the offending key) and the control socket's
//! requests, replies and events.

pub mod api;
pub mod client;
pub mod room;
