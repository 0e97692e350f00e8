//! The measurement: one blocking thread per connection, and a coordinator
//! (the calling thread) that runs the warm-up, opens the measured window and
//! closes it.
//!
//! Each connection thread sends a request, waits for the whole reply, and
//! sends the next (closed loop), so the figures are throughput at a given
//! concurrency and the latency each request saw. Requests that start inside
//! the measured window are counted and their latencies recorded in a
//! per-thread histogram; the histograms are merged at the end. Network
//! errors are counted, never fatal: a broken connection is reopened after a
//! short pause.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use p2p_proto::protocol::Request;

use crate::target::{Conn, OpError, Outcome, Target};
use crate::workload::{self, Mix, Op, Rng};

/// Largest latency the histograms track (longer ones are recorded as this).
const HISTOGRAM_MAX: Duration = Duration::from_secs(60);

/// Significant decimal digits the histograms keep (0.1 % resolution).
const HISTOGRAM_DIGITS: u8 = 3;

/// Pause after a failed connection before the next attempt, so a server
/// that is down is not hammered by a spinning loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Stack of a connection thread: it holds a request, a reply and a histogram.
const THREAD_STACK: usize = 256 * 1024;

/// How a connection thread uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One connection per thread for the whole run.
    Persistent,
    /// A new connection for every request, closed after its reply (the
    /// original design's client).
    PerRequest,
}

impl Mode {
    pub fn word(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::PerRequest => "per-request",
        }
    }
}

/// Everything one measurement needs.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub addr: String,
    /// Connection threads.
    pub conns: usize,
    /// Time under load before the measured window opens.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    pub mix: Mix,
    pub mode: Mode,
    /// Files `0..names` exist (were preloaded); searches pick among them.
    pub names: u64,
    /// Connect, read and write timeout of each request.
    pub timeout: Duration,
    /// Seed of the per-thread random generators (runs are repeatable).
    pub seed: u64,
    /// The server's process id, when it runs on this machine: its CPU time
    /// in the window is then reported too.
    pub server_pid: Option<u32>,
}

/// What one measurement saw.
pub struct LoadReport {
    /// Actual length of the measured window.
    pub elapsed: Duration,
    /// Requests completed (hits and misses).
    pub ops: u64,
    pub hits: u64,
    pub misses: u64,
    /// Failed requests and failed connects inside the window.
    pub errors: u64,
    /// The first error seen, for the operator.
    pub first_error: Option<String>,
    /// Latency of completed requests, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// CPU time this process (the load generator) used in the window, in
    /// cores: shows how much of the machine the client itself took.
    pub client_cores: Option<f64>,
    /// CPU time the server used in the window, in cores (with `server_pid`).
    pub server_cores: Option<f64>,
}

impl LoadReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1_000.0
    }

    pub fn max_us(&self) -> f64 {
        self.histogram.max() as f64 / 1_000.0
    }
}

/// Phases of a run, shared by the coordinator and the connection threads.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Runs one measurement and returns its figures.
pub fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    if config.conns == 0 {
        anyhow::bail!("--conns must be at least 1");
    }
    if let Some(op) = config.mix.ops().find(|op| !config.target.supports(*op)) {
        anyhow::bail!(
            "--target {} cannot carry {} requests",
            config.target.word(),
            op.word()
        );
    }
    let phase = Arc::new(AtomicU8::new(WARMUP));
    // Every thread has connected (or failed to) before the warm-up starts.
    let ready = Arc::new(Barrier::new(config.conns + 1));
    let mut threads = Vec::with_capacity(config.conns);
    for index in 0..config.conns {
        let config = config.clone();
        let phase = Arc::clone(&phase);
        let ready = Arc::clone(&ready);
        let thread = thread::Builder::new()
            .name(format!("conn-{index}"))
            .stack_size(THREAD_STACK)
            .spawn(move || connection_thread(index, &config, &phase, &ready));
        match thread {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // The threads already started wait at the barrier for the rest:
                // they cannot be released, so give up on the whole run.
                return Err(e).context("starting a connection thread");
            }
        }
    }
    ready.wait();
    thread::sleep(config.warmup);
    let server_stat = config.server_pid.map(|pid| format!("/proc/{pid}/stat"));
    let server_cpu = || server_stat.as_deref().and_then(process_cpu_time);
    let client_start = process_cpu_time(SELF_STAT);
    let server_start = server_cpu();
    let start = Instant::now();
    phase.store(MEASURE, Ordering::Release);
    thread::sleep(config.duration);
    phase.store(STOP, Ordering::Release);
    let elapsed = start.elapsed();
    let cores =
        |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) / elapsed.as_secs_f64());
    let client_cores = cores(client_start, process_cpu_time(SELF_STAT));
    let server_cores = cores(server_start, server_cpu());

    let mut report = LoadReport {
        elapsed,
        ops: 0,
        hits: 0,
        misses: 0,
        errors: 0,
        first_error: None,
        histogram: new_histogram()?,
        client_cores,
        server_cores,
    };
    for thread in threads {
        let stats = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a connection thread panicked"))??;
        report.hits += stats.hits;
        report.misses += stats.misses;
        report.errors += stats.errors;
        if report.first_error.is_none() {
            report.first_error = stats.first_error;
        }
        report
            .histogram
            .add(&stats.histogram)
            .context("merging latency histograms")?;
    }
    report.ops = report.hits + report.misses;
    Ok(report)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX.as_nanos() as u64, HISTOGRAM_DIGITS)
        .context("creating a latency histogram")
}

/// One connection thread's counts.
struct ThreadStats {
    hits: u64,
    misses: u64,
    errors: u64,
    first_error: Option<String>,
    histogram: Histogram<u64>,
}

impl ThreadStats {
    fn error(&mut self, measuring: bool, e: &OpError) {
        if measuring {
            self.errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

fn connection_thread(
    index: usize,
    config: &LoadConfig,
    phase: &AtomicU8,
    ready: &Barrier,
) -> anyhow::Result<ThreadStats> {
    let mut stats = ThreadStats {
        hits: 0,
        misses: 0,
        errors: 0,
        first_error: None,
        histogram: new_histogram()?,
    };
    let mut rng = Rng::new(config.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9));
    let names = config.names.max(1);
    // Measured registrations: this thread takes every `conns`-th sequence number.
    let mut register_seq = index as u64;
    let mut name = String::new();
    let mut word = String::new();
    let mut conn: Option<Conn> = None;
    if config.mode == Mode::Persistent {
        match Conn::connect(config.target, &config.addr, config.timeout) {
            Ok(c) => conn = Some(c),
            Err(e) => stats.error(false, &e),
        }
    }
    ready.wait();
    loop {
        let measuring = match phase.load(Ordering::Acquire) {
            STOP => break,
            p => p == MEASURE,
        };
        let op = config.mix.pick(rng.next_u64());
        let registration;
        let request = match op {
            Op::Search => {
                workload::write_name(&mut name, rng.next_u64() % names);
                Request::Search { name: &name }
            }
            Op::Register => {
                registration = workload::measured_registration(register_seq, names);
                register_seq += config.conns as u64;
                workload::write_name(&mut name, registration.file);
                Request::Register {
                    port: registration.port,
                    size: registration.size,
                    sha256: &registration.sha256,
                    name: &name,
                }
            }
            Op::Find => {
                use std::fmt::Write as _;
                word.clear();
                // Writing to a String cannot fail.
                let _ = write!(word, "{}", rng.next_u64() % names);
                Request::Find {
                    words: vec!["file", &word],
                }
            }
            Op::Heartbeat => Request::Heartbeat {
                port: workload::preload_port(rng.next_u64()),
            },
            Op::Ping => Request::Ping,
        };

        let started = Instant::now();
        let result = match config.mode {
            Mode::Persistent => {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect(config.target, &config.addr, config.timeout) {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            stats.error(measuring, &e);
                            thread::sleep(ERROR_BACKOFF);
                            continue;
                        }
                    },
                };
                c.call(&request)
            }
            Mode::PerRequest => Conn::connect(config.target, &config.addr, config.timeout)
                .and_then(|mut c| c.call(&request)),
        };
        let latency = started.elapsed();
        match result {
            Ok(outcome) => {
                if measuring {
                    match outcome {
                        Outcome::Hit => stats.hits += 1,
                        Outcome::Miss => stats.misses += 1,
                    }
                    stats
                        .histogram
                        .saturating_record(latency.as_nanos().try_into().unwrap_or(u64::MAX));
                }
            }
            Err(e) => {
                stats.error(measuring, &e);
                if !e.keeps_connection() {
                    conn = None;
                    thread::sleep(ERROR_BACKOFF);
                }
            }
        }
    }
    Ok(stats)
}

/// Where this process's CPU times are.
const SELF_STAT: &str = "/proc/self/stat";

/// User plus system CPU seconds a process has used, from its `/proc/PID/stat`
/// (Linux only; `None` elsewhere or when it cannot be read).
fn process_cpu_time(stat_path: &str) -> Option<f64> {
    /// Clock ticks per second of `/proc` figures (USER_HZ, 100 on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}
