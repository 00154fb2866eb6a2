//! Networking: TCP sockets, servers, client connections, UDP and TLS.

pub(crate) mod connect;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod udp;

/// A socket address from `socket2`'s form; `Unsupported` for non-IP families.
pub(crate) fn socket_addr(addr: socket2::SockAddr) -> std::io::Result<std::net::SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported))
}
