//! Parses the `HOST:PORT` an operator types into the form the registry
//! stores, so `--peer` matches exactly what the server wrote.
//!
//! The registry records the IP address it saw on the connection, never a
//! name, so a host must be an IP literal: `10.0.0.5:9000` or `[::1]:9000`.
//! This module does no lookups and touches no database.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dht_server::store::admin::PeerAddr;
use p2p_proto::protocol::host_of;

/// Why a `HOST:PORT` was refused; the message shows the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad peer address {input:?}: {reason} (expected HOST:PORT, e.g. 10.0.0.5:9000 or [::1]:9000)"
)]
pub struct PeerParseError {
    pub input: String,
    pub reason: &'static str,
}

/// `10.0.0.5:9000` or `[::1]:9000` → the stored host and the port. The host
/// is written the way the server writes it (IPv6 compressed, in brackets;
/// an IPv4-mapped IPv6 address as plain IPv4).
pub fn parse_peer(input: &str) -> Result<PeerAddr, PeerParseError> {
    let err = |reason| PeerParseError {
        input: input.to_owned(),
        reason,
    };
    let (host, port) = input.rsplit_once(':').ok_or_else(|| err("no :PORT"))?;
    let ip: IpAddr = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| err("IPv6 host without its closing ]"))?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| err("not an IPv6 address inside [ ]"))?
            .into()
    } else if host.contains(':') {
        return Err(err("an IPv6 host must be written in brackets"));
    } else if host.is_empty() {
        return Err(err("no host"));
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| {
                err("host is not an IP address (the registry records addresses, not names)")
            })?
            .into()
    };
    let port: u16 = port
        .parse()
        .map_err(|_| err("port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(err("port 0 is never registered"));
    }
    Ok(PeerAddr {
        host: host_of(ip),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        parse_peer(input).unwrap().to_string()
    }

    #[test]
    fn accepts_the_forms_the_registry_stores() {
        assert_eq!(ok("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(ok("[::1]:9000"), "[::1]:9000");
        assert_eq!(ok("[0:0:0:0:0:0:0:1]:65535"), "[::1]:65535");
        assert_eq!(ok("[::ffff:10.0.0.5]:1"), "10.0.0.5:1");
    }

    #[test]
    fn refuses_malformed_input_with_a_reason() {
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            ":9000",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:x",
            "localhost:9000",
            "::1:9000",
            "[::1:9000",
            "[nope]:9000",
            "1.2.3:9000",
        ] {
            let e = parse_peer(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("HOST:PORT"), "{e}");
        }
    }
}
