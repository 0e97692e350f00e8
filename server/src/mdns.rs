//! Announcing the registry on the LAN by mDNS/DNS-SD, so that peers started
//! without `--server` find it (see `p2p_proto::mdns` for the service type
//! and TXT keys).
//!
//! The announcement names only addresses the registry is reachable at: the
//! bound IP when bound to one, every non-loopback interface address when
//! bound to the unspecified address, and nothing when bound to loopback
//! (nobody else on the LAN could connect). The `mdns-sd` daemon runs on its
//! own thread; dropping the [`Announcement`] sends the goodbye packets and
//! stops it. This module must never make the registry fail: callers treat
//! every error as a warning.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use p2p_proto::mdns::{PROTOCOL_VERSION, SERVICE_TYPE, TXT_PROTOCOL, TXT_VERSION};

/// How long dropping an [`Announcement`] waits for the goodbye packets to
/// go out, so a clean shutdown is not delayed by a stuck daemon.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// DNS labels are at most 63 bytes; instance names are cut to this.
const MAX_INSTANCE_NAME: usize = 63;

/// Why the registry could not be announced.
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    #[error("cannot start the mDNS daemon: {0}")]
    Daemon(mdns_sd::Error),
    #[error("cannot describe the mDNS service {SERVICE_TYPE}: {0}")]
    Service(mdns_sd::Error),
    #[error("cannot announce {SERVICE_TYPE}: {0}")]
    Register(mdns_sd::Error),
}

/// What [`plan`] decided to announce for a bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Bound to a loopback address: nothing on the LAN can reach it.
    Nothing,
    /// Bound to one address: announce that address, on its interface only.
    One(IpAddr),
    /// Bound to the unspecified address: every non-loopback interface
    /// address (IPv4 only for `0.0.0.0`), kept current by the daemon.
    AllInterfaces { ipv6: bool },
}

/// The addresses worth announcing for a listener bound to `bound`.
pub fn plan(bound: SocketAddr) -> Plan {
    let ip = bound.ip();
    if ip.is_loopback() {
        Plan::Nothing
    } else if ip.is_unspecified() {
        Plan::AllInterfaces { ipv6: ip.is_ipv6() }
    } else {
        Plan::One(ip)
    }
}

/// A live announcement; dropping it withdraws it.
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Announcement {
    /// The DNS-SD instance name announced, e.g. `dht-server on host port 9000._p2p-registry._tcp.local.`
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        if let Ok(status) = self.daemon.unregister(&self.fullname) {
            let _ = status.recv_timeout(GOODBYE_TIMEOUT);
        }
        if let Ok(status) = self.daemon.shutdown() {
            let _ = status.recv_timeout(GOODBYE_TIMEOUT);
        }
    }
}

/// Announces the registry listening on `bound`; `Ok(None)` when [`plan`]
/// finds nothing worth announcing.
pub fn announce(bound: SocketAddr) -> Result<Option<Announcement>, MdnsError> {
    let plan = plan(bound);
    if plan == Plan::Nothing {
        return Ok(None);
    }
    let daemon = ServiceDaemon::new().map_err(MdnsError::Daemon)?;
    let host = host_name();
    let instance = instance_name(&host, bound.port());
    let properties = [
        (TXT_PROTOCOL, PROTOCOL_VERSION),
        (TXT_VERSION, env!("CARGO_PKG_VERSION")),
    ];
    let host_name = format!("{host}.local.");
    let result = (|| {
        let info = match plan {
            Plan::One(ip) => {
                // Only the interface that carries the bound address: the
                // daemon would otherwise answer on every interface with it.
                daemon
                    .disable_interface(IfKind::All)
                    .map_err(MdnsError::Daemon)?;
                daemon
                    .enable_interface(IfKind::Addr(ip))
                    .map_err(MdnsError::Daemon)?;
                ServiceInfo::new(
                    SERVICE_TYPE,
                    &instance,
                    &host_name,
                    ip,
                    bound.port(),
                    &properties[..],
                )
                .map_err(MdnsError::Service)?
            }
            Plan::AllInterfaces { ipv6 } => {
                let mut off = vec![IfKind::LoopbackV4, IfKind::LoopbackV6];
                if !ipv6 {
                    off.push(IfKind::IPv6); // 0.0.0.0 does not accept IPv6
                }
                daemon.disable_interface(off).map_err(MdnsError::Daemon)?;
                ServiceInfo::new(
                    SERVICE_TYPE,
                    &instance,
                    &host_name,
                    (),
                    bound.port(),
                    &properties[..],
                )
                .map_err(MdnsError::Service)?
                .enable_addr_auto()
            }
            Plan::Nothing => unreachable!("returned above"),
        };
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(MdnsError::Register)?;
        Ok(fullname)
    })();
    match result {
        Ok(fullname) => Ok(Some(Announcement { daemon, fullname })),
        Err(e) => {
            let _ = daemon.shutdown();
            Err(e)
        }
    }
}

/// Announces, turning every failure into a warning (the contract: never fatal).
pub fn announce_or_warn(bound: SocketAddr) -> Option<Announcement> {
    match announce(bound) {
        Ok(Some(announcement)) => {
            tracing::info!(
                service = announcement.fullname(),
                "announced on the LAN by mDNS"
            );
            Some(announcement)
        }
        Ok(None) => {
            tracing::info!(
                %bound,
                "bound to loopback: not announced by mDNS (nothing else could reach it)"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "not announced on the LAN");
            None
        }
    }
}

/// This machine's host name (Linux), as a DNS label; `dht-server` otherwise.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let label: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_INSTANCE_NAME)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "dht-server".to_owned()
    } else {
        label.to_owned()
    }
}

fn instance_name(host: &str, port: u16) -> String {
    let mut name = format!("dht-server on {host} port {port}");
    if name.len() > MAX_INSTANCE_NAME {
        let mut cut = MAX_INSTANCE_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_only_reachable_addresses() {
        assert_eq!(plan("127.0.0.1:9000".parse().unwrap()), Plan::Nothing);
        assert_eq!(plan("[::1]:9000".parse().unwrap()), Plan::Nothing);
        assert_eq!(
            plan("0.0.0.0:9000".parse().unwrap()),
            Plan::AllInterfaces { ipv6: false }
        );
        assert_eq!(
            plan("[::]:9000".parse().unwrap()),
            Plan::AllInterfaces { ipv6: true }
        );
        assert_eq!(
            plan("10.0.0.7:9000".parse().unwrap()),
            Plan::One("10.0.0.7".parse().unwrap())
        );
    }

    #[test]
    fn instance_names_fit_a_dns_label() {
        let long = "h".repeat(100);
        assert!(instance_name(&long, 65535).len() <= MAX_INSTANCE_NAME);
        assert_eq!(instance_name("box", 9000), "dht-server on box port 9000");
    }

    #[test]
    fn loopback_is_not_announced() {
        assert!(announce("127.0.0.1:9000".parse().unwrap())
            .unwrap()
            .is_none());
    }
}
