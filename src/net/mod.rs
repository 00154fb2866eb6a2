//! Networking: TCP sockets, servers, client connections and UDP.

pub(crate) mod connect;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod udp;
