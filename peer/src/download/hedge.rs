//! Asking several sources at once on the sequential path (hedged requests):
//! the first source is asked; if it has not answered within [`HEDGE_DELAY`]
//! the next one is asked too, and so on, up to [`PROBE_PARALLEL`] at once.
//! The first usable answer (`200`, `206` or `416`) wins; the others are
//! hung up. A source that answers at once is the only one asked, so the
//! registry's order (most recently seen first) still decides when nothing
//! stalls, and a row of stalling sources costs one first-byte deadline
//! instead of one each.
//!
//! Each request runs on its own short-lived thread that owns what it needs,
//! so a connect still in progress never holds the download (a lone source
//! is asked on the caller's thread: there is nobody to hedge to). This module
//! must not read a body: it hands the winner's connection, with its head
//! read, to the sequential path. In a batch the requests go through the
//! batch's connection `pool`.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_proto::protocol::Source;

use super::error::SourceError;
use super::http::{request_file, Response};
use super::limits::PROBE_PARALLEL;
use super::pool::Pool;

/// How long one source may take to answer before the next one is asked
/// as well. The one limit `P2P_TEST_TIMEOUT_SCALE` leaves alone (see
/// `race`).
pub const HEDGE_DELAY: Duration = Duration::from_millis(500);

/// What a race found.
#[derive(Debug, Default)]
pub struct Raced {
    /// The index (in the sources given) and the answer of the winner.
    pub winner: Option<(usize, Response)>,
    /// Sources that failed to answer usably, with why.
    pub failed: Vec<(usize, SourceError)>,
}

/// Asks `sources` (in order, hedged) for `name` from byte `range` on (see
/// the module doc), over `pool`'s connections when given.
pub fn race(sources: &[&Source], name: &str, range: Option<u64>, pool: Option<&Pool>) -> Raced {
    let (done, results) = mpsc::channel::<(usize, Result<Response, SourceError>)>();
    let mut raced = Raced::default();
    let mut launched = 0usize;
    let mut in_flight = 0usize;
    let mut next_launch = Instant::now();
    if let [source] = sources {
        // Nobody to hedge to: ask here, without a thread.
        match ask(source, name, range, pool).and_then(|r| usable(source, name, r)) {
            Ok(response) => raced.winner = Some((0, response)),
            Err(error) => raced.failed.push((0, error)),
        }
        return raced;
    }
    loop {
        let now = Instant::now();
        if launched < sources.len() && in_flight < PROBE_PARALLEL && now >= next_launch {
            let source = sources[launched].clone();
            let (owned_name, sender, index) = (name.to_owned(), done.clone(), launched);
            let owned_pool = pool.cloned();
            let spawned = thread::Builder::new()
                .name(format!("ask-{index}"))
                .spawn(move || {
                    let answer = ask(&source, &owned_name, range, owned_pool.as_ref())
                        .and_then(|r| usable(&source, &owned_name, r));
                    // Nobody listens once another source won: the answer
                    // (and its connection) is dropped.
                    let _ = sender.send((index, answer));
                });
            if spawned.is_err() {
                // No thread: ask this one alone, here.
                let answer = ask(sources[launched], name, range, pool)
                    .and_then(|r| usable(sources[launched], name, r));
                let _ = done.send((launched, answer));
            }
            launched += 1;
            in_flight += 1;
            // Not scaled in tests: a loaded test machine may take tens of
            // milliseconds to answer, and the registry's order must still
            // decide who is asked when nobody stalls.
            next_launch = now + HEDGE_DELAY;
            continue;
        }
        if in_flight == 0 {
            return raced;
        }
        let wait = if launched < sources.len() && in_flight < PROBE_PARALLEL {
            next_launch.saturating_duration_since(now)
        } else {
            // Every request ends by its own deadlines.
            Duration::from_secs(3600)
        };
        match results.recv_timeout(wait) {
            Ok((index, Ok(response))) => {
                raced.winner = Some((index, response));
                return raced;
            }
            Ok((index, Err(error))) => {
                in_flight -= 1;
                raced.failed.push((index, error));
                // Nothing is gained by waiting for a source that failed.
                next_launch = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return raced,
        }
    }
}

/// One request, over the pool's connections when there is one.
fn ask(
    source: &Source,
    name: &str,
    range: Option<u64>,
    pool: Option<&Pool>,
) -> Result<Response, SourceError> {
    match pool {
        Some(pool) => pool.request_file(source, name, range),
        None => request_file(source, name, range),
    }
}

/// An answer the sequential path can go on with; anything else is the
/// source's failure.
fn usable(source: &Source, name: &str, response: Response) -> Result<Response, SourceError> {
    match response.head.status {
        200 | 206 | 416 => Ok(response),
        status => Err(SourceError::Status {
            addr: source.addr(),
            status,
            reason: response.head.reason.clone(),
            name: name.to_owned(),
        }),
    }
}
