//! Networking: TCP sockets, servers, client connections, UDP and TLS.

pub(crate) mod connect;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod udp;
