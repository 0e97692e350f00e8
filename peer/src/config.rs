//! What one peer process is configured with: plain values, no command-line
//! types. The `peer` binary builds a [`PeerConfig`] from its arguments once;
//! every mode of the library (menu, serve, get, ...) takes it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::dht::DhtConfig;
use crate::download::Options;
use crate::http::FileServerConfig;
use crate::watch::WatchConfig;

/// Everything the modes of a peer share.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Address of the registry (dht-server), `host:port`.
    pub server: String,
    /// Port of this peer's file server; `None` lets the menu ask, 0 picks a free one.
    pub port: Option<u16>,
    /// Folder whose regular files this peer shares.
    pub shared: PathBuf,
    /// Folder downloads are written to.
    pub downloads: PathBuf,
    /// Time between heartbeats that keep registrations alive.
    pub heartbeat: Duration,
    /// Address the file server listens on.
    pub bind: IpAddr,
    /// How downloads proceed.
    pub download: Options,
    /// The file server's limits.
    pub file_server: FileServerConfig,
    /// Whether the finished files of the downloads folder are shared too
    /// (`--share-downloads`).
    pub share_downloads: bool,
    /// The state folder (the hash cache); `None`: a hidden folder beside
    /// the shared folder ([`crate::hashcache::default_state_dir`]).
    pub state: Option<PathBuf>,
    /// How the live shared folder is watched (settle time, rescan interval).
    pub watch: WatchConfig,
    /// Where the control UI listens (`--ui`), or that it is off.
    pub ui: UiAddr,
    /// `--dht`: announce on and look up in the Mainline DHT too; `None`: registry only.
    pub dht: Option<DhtConfig>,
}

/// What `--ui` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UiAddr {
    /// `--ui off`: no UI.
    Off,
    /// No `--ui`: [`crate::ui::DEFAULT_UI_ADDR`], or the next free of [`crate::ui::UI_PORT_TRIES`] ports.
    #[default]
    Default,
    /// `--ui ADDR`: exactly there (port 0 picks a free one).
    At(SocketAddr),
}

impl std::str::FromStr for UiAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<UiAddr, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(UiAddr::Off);
        }
        text.parse::<SocketAddr>().map(UiAddr::At).map_err(|_| {
            format!(
                "{text:?} is not an address: give IP:PORT (e.g. 127.0.0.1:8390, [::1]:0) or off"
            )
        })
    }
}
