//! Which registry to talk to: `--server` if given, else the environment
//! variable [`ENV_SERVER`], else a registry found on the LAN by mDNS/DNS-SD
//! within [`BROWSE_TIMEOUT`], else [`DEFAULT_REGISTRY`].
//!
//! Browsing stops at the first registry that resolves to a usable address.
//! It must never make the peer fail: a browse that cannot start (no
//! multicast, no interfaces) is a warning and the next rule applies. This
//! module only finds an address; it never connects to it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent};
use p2p_proto::mdns::{PROTOCOL_VERSION, SERVICE_TYPE, TXT_PROTOCOL};

/// Environment variable naming the registry when `--server` is not given.
pub const ENV_SERVER: &str = "P2P_SERVER";

/// Longest wait for a registry to answer on the LAN (the contract's 2 s).
pub const BROWSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The registry used when nothing else names one.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:9000";

/// Where the registry address came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--server ADDR`.
    Flag,
    /// The [`ENV_SERVER`] variable.
    Environment,
    /// Found on the LAN; the DNS-SD instance that answered.
    Mdns { instance: String },
    /// Nothing named or found one: [`DEFAULT_REGISTRY`].
    Default,
}

/// A registry address and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `host:port` (IPv6 hosts as `[addr]`), ready for the registry client.
    pub addr: String,
    pub origin: Origin,
}

/// Why browsing for a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot browse for {SERVICE_TYPE} by mDNS: {0}")]
    Browse(mdns_sd::Error),
}

/// Applies the rules above: `flag` is `--server`, `env` the value of
/// [`ENV_SERVER`] (empty counts as unset). Browses only when both are absent.
pub fn resolve(flag: Option<&str>, env: Option<&str>, timeout: Duration) -> Resolved {
    if let Some(addr) = flag {
        return Resolved {
            addr: addr.to_owned(),
            origin: Origin::Flag,
        };
    }
    if let Some(addr) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return Resolved {
            addr: addr.to_owned(),
            origin: Origin::Environment,
        };
    }
    match browse(timeout) {
        Ok(Some((addr, instance))) => Resolved {
            addr,
            origin: Origin::Mdns { instance },
        },
        Ok(None) => Resolved {
            addr: DEFAULT_REGISTRY.to_owned(),
            origin: Origin::Default,
        },
        Err(e) => {
            tracing::warn!(error = %e, "using {DEFAULT_REGISTRY}");
            Resolved {
                addr: DEFAULT_REGISTRY.to_owned(),
                origin: Origin::Default,
            }
        }
    }
}

/// [`resolve`] with the process's environment and [`BROWSE_TIMEOUT`].
pub fn resolve_from_environment(flag: Option<&str>) -> Resolved {
    let env = std::env::var(ENV_SERVER).ok();
    resolve(flag, env.as_deref(), BROWSE_TIMEOUT)
}

/// Browses for a registry for at most `timeout`; the first one that
/// resolves to a usable address, as `(host:port, instance name)`.
pub fn browse(timeout: Duration) -> Result<Option<(String, String)>, DiscoveryError> {
    if timeout.is_zero() {
        return Ok(None); // not even one query packet
    }
    let daemon = ServiceDaemon::new().map_err(DiscoveryError::Browse)?;
    let found = (|| {
        let events = daemon
            .browse(SERVICE_TYPE)
            .map_err(DiscoveryError::Browse)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match events.recv_timeout(left) {
                Ok(ServiceEvent::ServiceResolved(service)) => {
                    if let Some(addr) = usable_address(&service) {
                        return Ok(Some((addr.to_string(), service.fullname.clone())));
                    }
                    tracing::debug!(service = %service.fullname, "no usable address announced");
                }
                Ok(_) => {}
                Err(_) => return Ok(None), // timed out, or the daemon stopped
            }
        }
    })();
    // The daemon's thread stops on its own; nothing here waits for it.
    let _ = daemon.shutdown();
    found
}

/// The address to connect to from what a registry announced: one that
/// speaks our protocol version, IPv4 before IPv6, never a link-local IPv6
/// (it needs a scope the registry client cannot carry).
fn usable_address(service: &ResolvedService) -> Option<SocketAddr> {
    let proto = service.txt_properties.get_property_val_str(TXT_PROTOCOL);
    if proto.is_some_and(|v| v != PROTOCOL_VERSION) {
        return None;
    }
    let ips: Vec<IpAddr> = service
        .addresses
        .iter()
        .map(|scoped| scoped.to_ip_addr())
        .collect();
    pick(&ips).map(|ip| SocketAddr::new(ip, service.port))
}

fn pick(ips: &[IpAddr]) -> Option<IpAddr> {
    let rank = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => None,
        IpAddr::V4(v4) if v4.is_link_local() => Some(1),
        IpAddr::V4(_) => Some(0),
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => None,
        // fe80::/10 needs a scope id.
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => None,
        IpAddr::V6(_) => Some(2),
    };
    let mut ranked: Vec<(u8, IpAddr)> = ips
        .iter()
        .filter_map(|ip| rank(ip).map(|r| (r, *ip)))
        .collect();
    ranked.sort();
    ranked.first().map(|(_, ip)| *ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_environment() {
        let r = resolve(Some("10.0.0.1:9000"), Some("10.0.0.2:9000"), Duration::ZERO);
        assert_eq!(r.addr, "10.0.0.1:9000");
        assert_eq!(r.origin, Origin::Flag);
        let r = resolve(None, Some(" 10.0.0.2:9000 "), Duration::ZERO);
        assert_eq!(r.addr, "10.0.0.2:9000");
        assert_eq!(r.origin, Origin::Environment);
    }

    #[test]
    fn empty_environment_counts_as_unset() {
        // A zero timeout: no multicast leaves this machine during the test.
        let r = resolve(None, Some(""), Duration::ZERO);
        assert_eq!(r.addr, DEFAULT_REGISTRY);
        assert_eq!(r.origin, Origin::Default);
    }

    #[test]
    fn prefers_routable_ipv4() {
        let ips: Vec<IpAddr> = [
            "fe80::1",
            "127.0.0.1",
            "2001:db8::1",
            "169.254.0.5",
            "10.0.0.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(pick(&ips), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(pick(&ips[..3]), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(pick(&ips[..2]), None);
    }
}
