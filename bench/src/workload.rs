//! What the load generator asks for: the operation mix, the names and
//! registrations it uses, and a small fast random number generator.
//!
//! Every target (the registry, the echo server, Redis) is driven with the
//! same names and the same sequence of operations, so their figures compare.
//! The data is deterministic: registration `j` of a preload always has the
//! same name, port, size and hash, so a later run can search what an earlier
//! invocation preloaded (`--names`).

use std::fmt::{self, Write as _};
use std::str::FromStr;

/// First port of the peers a preload registers as; the registry identifies a
/// peer by host and port, and every connection comes from 127.0.0.1.
pub const PRELOAD_PORT_BASE: u16 = 10_000;

/// How many distinct peers (ports) a preload spreads its registrations over:
/// a million registrations become 100 per peer, like peers sharing folders.
pub const PRELOAD_PORTS: u64 = 10_000;

/// First port of the peers that `register` operations announce, apart from
/// the preloaded ones so that every measured REGISTER adds a new source.
pub const REGISTER_PORT_BASE: u16 = 30_000;

/// How many ports `register` operations cycle through.
pub const REGISTER_PORTS: u64 = 30_000;

/// One kind of request the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `SEARCH name` (Redis: `SMEMBERS name`).
    Search,
    /// `REGISTER port size sha256 name` (Redis: `SADD name member`).
    Register,
    /// `FIND words` (registry only).
    Find,
    /// `HEARTBEAT port` (registry only).
    Heartbeat,
    /// `PING`.
    Ping,
}

impl Op {
    const ALL: [Op; 5] = [Op::Search, Op::Register, Op::Find, Op::Heartbeat, Op::Ping];

    /// The word used in `--mix`.
    pub fn word(self) -> &'static str {
        match self {
            Op::Search => "search",
            Op::Register => "register",
            Op::Find => "find",
            Op::Heartbeat => "heartbeat",
            Op::Ping => "ping",
        }
    }
}

/// Relative weights of the operations, e.g. `search=90,register=10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Operations with a positive weight, and their weights.
    weights: Vec<(Op, u32)>,
    total: u32,
}

/// A `--mix` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --mix {spec:?}: {reason} (expected e.g. search=90,register=10; operations: search, register, find, heartbeat, ping)")]
pub struct MixError {
    spec: String,
    reason: String,
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(spec: &str) -> Result<Mix, MixError> {
        let bad = |reason: String| MixError {
            spec: spec.to_owned(),
            reason,
        };
        let mut weights: Vec<(Op, u32)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (word, weight) = part.split_once('=').unwrap_or((part, "1"));
            let op = Op::ALL
                .into_iter()
                .find(|op| op.word().eq_ignore_ascii_case(word.trim()))
                .ok_or_else(|| bad(format!("unknown operation {word:?}")))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad weight {weight:?}")))?;
            if weights.iter().any(|(o, _)| *o == op) {
                return Err(bad(format!("{} given twice", op.word())));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights
            .iter()
            .try_fold(0u32, |sum, (_, w)| sum.checked_add(*w))
            .ok_or_else(|| bad("weights too large".into()))?;
        if total == 0 {
            return Err(bad("no operation has a positive weight".into()));
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (op, weight)) in self.weights.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{}={weight}", op.word())?;
        }
        Ok(())
    }
}

impl Mix {
    /// The operation for a random number (any `u64`), in proportion to the weights.
    pub fn pick(&self, random: u64) -> Op {
        let mut r = (random % u64::from(self.total)) as u32;
        for &(op, weight) in &self.weights {
            if r < weight {
                return op;
            }
            r -= weight;
        }
        // Unreachable while `total` is the sum of the weights.
        self.weights[0].0
    }

    /// The operations this mix can pick.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights.iter().map(|(op, _)| *op)
    }
}

/// Writes the name of file number `i` into `out` (after clearing it).
pub fn write_name(out: &mut String, i: u64) {
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(out, "bench-file-{i}");
}

/// The name of file number `i`.
pub fn name(i: u64) -> String {
    let mut out = String::new();
    write_name(&mut out, i);
    out
}

/// The announced content hash of file number `i`: 64 lowercase hex digits.
pub fn sha256_of(i: u64) -> String {
    format!("{:064x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The announced size of file number `i`.
pub fn size_of(i: u64) -> u64 {
    1_000 + i % 1_000_000
}

/// One registration: file number, the announcing peer's port, size and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub file: u64,
    pub port: u16,
    pub size: u64,
    pub sha256: String,
}

/// Registration `j` of a preload: file `j`, on one of [`PRELOAD_PORTS`] peers.
pub fn preload_registration(j: u64) -> Registration {
    Registration {
        file: j,
        port: PRELOAD_PORT_BASE + (j % PRELOAD_PORTS) as u16,
        size: size_of(j),
        sha256: sha256_of(j),
    }
}

/// The `seq`-th measured registration over `names` preloaded files: an
/// existing file gets a new source (a new peer port), so every one is a new
/// row, as long as `seq < names * REGISTER_PORTS`.
pub fn measured_registration(seq: u64, names: u64) -> Registration {
    let names = names.max(1);
    let file = seq % names;
    Registration {
        file,
        port: REGISTER_PORT_BASE + ((seq / names) % REGISTER_PORTS) as u16,
        size: size_of(file),
        sha256: sha256_of(file),
    }
}

/// A preloaded peer's port, for a `HEARTBEAT`.
pub fn preload_port(random: u64) -> u16 {
    PRELOAD_PORT_BASE + (random % PRELOAD_PORTS) as u16
}

/// xorshift64*: a few nanoseconds per number, plenty for picking names.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (zero is replaced, xorshift needs a nonzero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_in_proportion() {
        let mix: Mix = "search=90, register=10".parse().unwrap();
        assert_eq!(mix.to_string(), "search=90,register=10");
        let mut rng = Rng::new(7);
        let searches = (0..10_000)
            .filter(|_| mix.pick(rng.next_u64()) == Op::Search)
            .count();
        assert!((8_500..9_500).contains(&searches), "{searches}");
        assert_eq!("ping".parse::<Mix>().unwrap().pick(3), Op::Ping);
    }

    #[test]
    fn mix_rejects_nonsense() {
        for bad in ["", "search=0", "jump=1", "search=x", "search=1,search=2"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn registrations_are_valid_protocol_fields() {
        let r = preload_registration(123_456);
        assert!(p2p_proto::protocol::is_sha256_hex(&r.sha256));
        assert!(p2p_proto::protocol::check_name(&name(r.file)).is_ok());
        assert_ne!(
            measured_registration(5, 100).port,
            measured_registration(105, 100).port
        );
    }
}
