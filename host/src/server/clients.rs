//! Who a request comes from, for the bounds that give each client a share of what the server
//! holds (request-body bytes, live feeds): its peer's IP address, an IPv6 address by its /64,
//! which one client may hold whole, as nginx and most providers hand out.
//!
//! `X-Forwarded-For` is not trusted (anyone could send one): behind a reverse proxy every
//! client has the proxy's address, so there the shares are turned off and each client is
//! bounded at the proxy.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::Extensions;

/// The client a request with these extensions comes from; none when its peer is not known (a
/// router served without [`listener::serve`](super::listener::serve)), and then no share
/// applies.
pub fn of_request(extensions: &Extensions) -> Option<IpAddr> {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>()?;
    Some(of_peer(peer.ip()))
}

/// The client an address belongs to: an IPv4 address (also written as IPv6), or an IPv6 /64.
pub fn of_peer(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_ipv4_address_or_its_ipv6_slash_64() {
        let client = |peer: &str| of_peer(peer.parse().unwrap()).to_string();
        assert_eq!(client("10.0.0.1"), "10.0.0.1");
        assert_eq!(client("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(client("2001:db8::ffff:2"), "2001:db8::");
        let mut extensions = Extensions::new();
        assert_eq!(of_request(&extensions), None);
        extensions.insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 80))));
        assert_eq!(of_request(&extensions), Some(IpAddr::from([10, 0, 0, 1])));
    }
}
