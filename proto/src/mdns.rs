//! The names under which a registry is announced on the LAN by mDNS/DNS-SD
//! (RFC 6762/6763): the service type and the TXT keys. Constants only, shared
//! by the announcer (`dht-server`) and the browser (the peer); no sockets here.

/// DNS-SD service type of a registry: `<instance>._p2p-registry._tcp.local.`
pub const SERVICE_TYPE: &str = "_p2p-registry._tcp.local.";

/// TXT key carrying the registry wire-protocol version the announcer speaks.
pub const TXT_PROTOCOL: &str = "proto";

/// The value of [`TXT_PROTOCOL`] for the protocol of [`crate::protocol`].
pub const PROTOCOL_VERSION: &str = "1";

/// TXT key carrying the announcing program's version (informational).
pub const TXT_VERSION: &str = "version";
