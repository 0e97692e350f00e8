//! Filling the system under test before a measurement: `count`
//! registrations (file `j` on one of many peer ports, see
//! [`workload::preload_registration`]), sent over several connections with
//! many requests in flight on each (pipelined) for speed.
//!
//! The registry answers one request per connection at a time and batches
//! commits across connections, so preloading it fast takes many connections;
//! Redis answers a whole pipelined window per event-loop turn, so a few do.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use p2p_proto::client::{Client, Reply};
use p2p_proto::protocol::Request;

use crate::target::{LineConn, Target};
use crate::workload;

/// Requests written before their replies are read, per connection.
const PIPELINE_WINDOW: u64 = 128;

/// Connections a Redis preload uses (Redis serves them on one thread).
const REDIS_PRELOAD_CONNS: usize = 4;

/// What a preload did.
#[derive(Debug, Clone)]
pub struct PreloadReport {
    pub count: u64,
    /// Registrations not acknowledged (error replies, lost connections).
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Registers files `0..count` on `target` at `addr` over `conns` connections.
pub fn preload(
    target: Target,
    addr: &str,
    count: u64,
    conns: usize,
    timeout: Duration,
) -> anyhow::Result<PreloadReport> {
    let conns = match target {
        Target::Dht => conns.max(1),
        Target::Redis => REDIS_PRELOAD_CONNS,
        Target::Echo => anyhow::bail!("the echo server holds no data: nothing to preload"),
    };
    let started = Instant::now();
    let mut report = PreloadReport {
        count,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    thread::scope(|scope| -> anyhow::Result<()> {
        let mut threads = Vec::with_capacity(conns);
        for index in 0..conns {
            let thread = thread::Builder::new()
                .name(format!("preload-{index}"))
                .spawn_scoped(scope, move || {
                    let part = Part {
                        first: index as u64,
                        step: conns as u64,
                        count,
                    };
                    match target {
                        Target::Dht => preload_dht(addr, part, timeout),
                        _ => preload_redis(addr, part, timeout),
                    }
                })
                .context("starting a preload thread")?;
            threads.push(thread);
        }
        for thread in threads {
            let (errors, first_error) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a preload thread panicked"))?;
            report.errors += errors;
            if report.first_error.is_none() {
                report.first_error = first_error;
            }
        }
        Ok(())
    })?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The registrations one connection sends: `first`, `first + step`, ... below `count`.
#[derive(Debug, Clone, Copy)]
struct Part {
    first: u64,
    step: u64,
    count: u64,
}

impl Part {
    /// The windows of this part, each a list of registration numbers.
    fn windows(self) -> impl Iterator<Item = Vec<u64>> {
        let mut next = self.first;
        std::iter::from_fn(move || {
            let window: Vec<u64> = (0..PIPELINE_WINDOW)
                .map(|k| next + k * self.step)
                .take_while(|&j| j < self.count)
                .collect();
            next += PIPELINE_WINDOW * self.step;
            (!window.is_empty()).then_some(window)
        })
    }
}

/// Counts failures of one preload connection; returns (errors, first error).
#[derive(Default)]
struct Failures {
    errors: u64,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.errors += n;
        if self.first.is_none() {
            self.first = Some(why());
        }
    }
}

fn preload_dht(addr: &str, part: Part, timeout: Duration) -> (u64, Option<String>) {
    let mut failures = Failures::default();
    let mut client: Option<Client> = None;
    let mut lines = String::new();
    let mut name = String::new();
    for window in part.windows() {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect_timeout(addr, timeout) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    failures.add(window.len() as u64, || e.to_string());
                    continue;
                }
            },
        };
        lines.clear();
        for &j in &window {
            let r = workload::preload_registration(j);
            workload::write_name(&mut name, r.file);
            Request::Register {
                port: r.port,
                size: r.size,
                sha256: &r.sha256,
                name: &name,
            }
            .write_line(&mut lines);
        }
        if let Err(e) = c.send_raw(&lines) {
            failures.add(window.len() as u64, || e.to_string());
            client = None;
            continue;
        }
        for answered in 0..window.len() {
            match c.read_reply() {
                Ok(Reply::Ok) => {}
                Ok(other) => failures.add(1, || format!("REGISTER answered {other:?}")),
                Err(e) => {
                    failures.add((window.len() - answered) as u64, || e.to_string());
                    client = None;
                    break;
                }
            }
        }
    }
    (failures.errors, failures.first)
}

fn preload_redis(addr: &str, part: Part, timeout: Duration) -> (u64, Option<String>) {
    let mut failures = Failures::default();
    let mut conn: Option<LineConn> = None;
    let mut commands = String::new();
    for window in part.windows() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match LineConn::connect_plain(addr, timeout) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    failures.add(window.len() as u64, || e.to_string());
                    continue;
                }
            },
        };
        commands.clear();
        for &j in &window {
            let r = workload::preload_registration(j);
            // Writing to a String cannot fail.
            let _ = write!(
                commands,
                "SADD {} 127.0.0.1:{}|{}|{}\r\n",
                workload::name(r.file),
                r.port,
                r.size,
                r.sha256
            );
        }
        if let Err(e) = c.send_raw(commands.as_bytes()) {
            failures.add(window.len() as u64, || e.to_string());
            conn = None;
            continue;
        }
        for answered in 0..window.len() {
            match c.read_resp() {
                Ok(summary) if !summary.error => {}
                Ok(_) => failures.add(1, || "SADD answered an error".into()),
                Err(e) => {
                    failures.add((window.len() - answered) as u64, || e.to_string());
                    conn = None;
                    break;
                }
            }
        }
    }
    (failures.errors, failures.first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_registration_once() {
        let count = 1_000;
        let mut seen: Vec<u64> = (0..3)
            .flat_map(|first| {
                Part {
                    first,
                    step: 3,
                    count,
                }
                .windows()
                .flatten()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..count).collect::<Vec<_>>());
    }
}
