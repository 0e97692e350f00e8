//! The UI's safety rules, decided from a request's headers alone (pure,
//! apart from reading the token's randomness once).
//!
//! - `Host` must be the UI's own address (`HOST:PORT` as printed in
//!   `ui on http://HOST:PORT/`, case-insensitive). A page on another site
//!   that re-points its DNS name at 127.0.0.1 (DNS rebinding) sends its own
//!   name as `Host` and is refused. When the UI listens on an unspecified
//!   address (`0.0.0.0`, `[::]`), any IP literal with the UI's port is its
//!   own address: a literal cannot be re-pointed by DNS.
//! - Anything but `GET` and `HEAD` changes state and must carry the token in
//!   [`TOKEN_HEADER`], and, when it has an `Origin`, that origin must be
//!   `http://` + the UI's own address. Browsers send `Origin` on every
//!   cross-site `POST`, and a page elsewhere cannot read the token (it sits
//!   in the UI's own page, which the same-origin policy hides from it).

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};

use p2p_proto::protocol::to_hex;

/// Header that carries the per-process token on state-changing requests.
pub const TOKEN_HEADER: &str = "X-P2P-Token";

/// Random bytes in a token (hex-encoded: twice as many characters).
pub const TOKEN_BYTES: usize = 32;

/// A fresh token from the kernel's random source.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(to_hex(&bytes))
}

/// `HOST:PORT` of `addr` as it appears in a URL and a `Host` header.
pub fn authority(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Why a request was refused (always `403`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the Host header is missing or is not this UI's address")]
    Host,
    #[error("the Origin header is not this UI's own origin")]
    Origin,
    #[error("the token header X-P2P-Token is missing or wrong (reload the page)")]
    Token,
}

/// The checks of one UI: its address and its token.
#[derive(Debug, Clone)]
pub struct Guard {
    addr: SocketAddr,
    token: String,
}

impl Guard {
    pub fn new(addr: SocketAddr, token: String) -> Guard {
        Guard { addr, token }
    }

    /// Where a person should point the browser: the UI's own address (with
    /// a placeholder for the IP when it listens on all addresses).
    pub fn url(&self) -> String {
        if self.addr.ip().is_unspecified() {
            format!(
                "http://<an IP address of this machine>:{}/",
                self.addr.port()
            )
        } else {
            format!("http://{}/", authority(self.addr))
        }
    }

    /// The token the page embeds.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `host` (a `Host` header value) names this UI.
    pub fn is_own_host(&self, host: &str) -> bool {
        let host = host.trim();
        if host.eq_ignore_ascii_case(&authority(self.addr)) {
            return true;
        }
        if !self.addr.ip().is_unspecified() {
            return false;
        }
        match host.parse::<SocketAddr>() {
            Ok(sa) => sa.port() == self.addr.port() && sa.is_ipv4() == self.addr.is_ipv4(),
            Err(_) => false,
        }
    }

    /// Decides one request: `host`, `origin` and `token` are its header
    /// values (`None` when absent); `changes_state` is true for anything but
    /// `GET` and `HEAD`.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        token: Option<&str>,
        changes_state: bool,
    ) -> Result<(), Refusal> {
        let host = host.filter(|h| self.is_own_host(h)).ok_or(Refusal::Host)?;
        if !changes_state {
            return Ok(());
        }
        if let Some(origin) = origin {
            let own = format!("http://{}", host.trim());
            if !origin.trim().eq_ignore_ascii_case(&own) {
                return Err(Refusal::Origin);
            }
        }
        match token {
            Some(given) if constant_time_eq(given.trim().as_bytes(), self.token.as_bytes()) => {
                Ok(())
            }
            _ => Err(Refusal::Token),
        }
    }
}

/// Compares without stopping at the first difference, so response timing
/// does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(addr: &str) -> Guard {
        Guard::new(addr.parse().unwrap(), "t0k".into())
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn host_must_be_the_ui_itself() {
        let g = guard("127.0.0.1:8390");
        assert_eq!(g.check(Some("127.0.0.1:8390"), None, None, false), Ok(()));
        for bad in [
            "evil.example:8390",
            "localhost:8390",
            "127.0.0.1:8391",
            "127.0.0.1",
            "",
        ] {
            assert_eq!(
                g.check(Some(bad), None, None, false),
                Err(Refusal::Host),
                "{bad}"
            );
        }
        assert_eq!(g.check(None, None, None, false), Err(Refusal::Host));
        let v6 = guard("[::1]:5");
        assert!(v6.is_own_host("[::1]:5"));
        assert!(!v6.is_own_host("::1:5"));
    }

    #[test]
    fn an_unspecified_address_accepts_ip_literals_only() {
        let g = guard("0.0.0.0:8390");
        assert!(g.is_own_host("192.168.1.7:8390"));
        assert!(g.is_own_host("0.0.0.0:8390"));
        assert!(!g.is_own_host("192.168.1.7:80"));
        assert!(!g.is_own_host("rebind.example:8390"));
    }

    #[test]
    fn state_changes_need_token_and_own_origin() {
        let g = guard("127.0.0.1:8390");
        let host = Some("127.0.0.1:8390");
        assert_eq!(g.check(host, None, Some("t0k"), true), Ok(()));
        assert_eq!(
            g.check(host, Some("http://127.0.0.1:8390"), Some("t0k"), true),
            Ok(())
        );
        assert_eq!(g.check(host, None, None, true), Err(Refusal::Token));
        assert_eq!(g.check(host, None, Some("t0x"), true), Err(Refusal::Token));
        assert_eq!(g.check(host, None, Some("t0k0"), true), Err(Refusal::Token));
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:8390",
            "http://127.0.0.1:8391",
        ] {
            assert_eq!(
                g.check(host, Some(origin), Some("t0k"), true),
                Err(Refusal::Origin),
                "{origin}"
            );
        }
        // Reading needs neither.
        assert_eq!(
            g.check(host, Some("http://evil.example"), None, false),
            Ok(())
        );
    }
}
