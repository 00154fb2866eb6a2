//! Networking: TCP sockets, servers and client connections.

pub(crate) mod connect;
pub(crate) mod server;
pub(crate) mod socket;
