//! The line-echo baseline: every line a client sends comes straight back.
//!
//! Two designs, so that their difference is the price of a design choice:
//! - [`serve_threaded`]: a thread per connection doing blocking `read` and
//!   `write`, like the registry's workers. This is the practical limit of
//!   one-line request/reply on the machine.
//! - [`serve_handoff`]: idle sockets parked in a poller (epoll, one-shot); a
//!   poller thread hands each readable connection through a crossbeam channel
//!   to a small worker pool, and the worker re-arms it after replying. This
//!   is what a "park idle sockets in a poller" registry would pay per request
//!   before doing any work.
//!
//! Both flush replies only when no further complete line is waiting, as the
//! registry does, and drop a connection that sends a line longer than
//! [`MAX_LINE_BYTES`].

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use p2p_proto::protocol::MAX_LINE_BYTES;
use polling::{Event, Events, Poller};

/// Bytes read from a socket at a time (the registry reads up to two lines' worth).
const READ_BUFFER: usize = 2 * MAX_LINE_BYTES;

/// Stack of a connection or worker thread (the registry uses the same).
const THREAD_STACK: usize = 256 * 1024;

/// Pause after a failing `accept` (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Pause when a non-blocking write finds the socket buffer full.
const WRITE_BACKOFF: Duration = Duration::from_micros(50);

/// Default size of the hand-off worker pool.
pub const DEFAULT_HANDOFF_WORKERS: usize = 4;

/// Serves each connection on its own thread until the process is killed.
pub fn serve_threaded(listener: TcpListener) -> io::Result<()> {
    for incoming in listener.incoming() {
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("echo-server: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // A client that vanishes is the normal end of a connection.
                let _ = echo_connection(stream);
            });
        if let Err(e) = spawned {
            eprintln!("echo-server: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn echo_connection(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream.try_clone()?);
    let mut writer = stream;
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            // End of input, or a line over the limit: flush and close.
            return writer.write_all(&out);
        }
        out.extend_from_slice(&line);
        if reader.buffer().is_empty() {
            writer.write_all(&out)?;
            out.clear();
        }
    }
}

/// One parked connection of the hand-off server.
struct Slot {
    key: usize,
    stream: TcpStream,
    /// Bytes received and not yet echoed (a partial line). Only the worker
    /// that holds the connection's one-shot event touches it, so the lock is
    /// never contended; it is there because the slot is shared.
    pending: Mutex<Vec<u8>>,
}

/// The open connections of the hand-off server, by poller key.
type Slots = Mutex<HashMap<usize, Arc<Slot>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single insert, remove or buffer edit.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parks connections in a poller and hands readable ones to `workers` threads.
pub fn serve_handoff(listener: TcpListener, workers: usize) -> io::Result<()> {
    let poller = Arc::new(Poller::new()?);
    let slots: Arc<Slots> = Arc::new(Mutex::new(HashMap::new()));
    let (ready_tx, ready_rx) = unbounded::<Arc<Slot>>();
    for index in 0..workers.max(1) {
        let ready_rx = ready_rx.clone();
        let poller = Arc::clone(&poller);
        let slots = Arc::clone(&slots);
        thread::Builder::new()
            .name(format!("worker-{index}"))
            .stack_size(THREAD_STACK)
            .spawn(move || handoff_worker(&ready_rx, &poller, &slots))?;
    }
    {
        let poller = Arc::clone(&poller);
        let slots = Arc::clone(&slots);
        thread::Builder::new()
            .name("poller".into())
            .spawn(move || poll_loop(&poller, &slots, &ready_tx))?;
    }
    let mut next_key = 0usize;
    for incoming in listener.incoming() {
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("echo-server: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            continue;
        }
        let key = next_key;
        next_key = next_key.wrapping_add(1) % (usize::MAX - 1);
        let slot = Arc::new(Slot {
            key,
            stream,
            pending: Mutex::new(Vec::with_capacity(256)),
        });
        lock(&slots).insert(key, Arc::clone(&slot));
        // SAFETY: the socket is deleted from the poller (in `close`) before
        // its slot is removed from `slots`, the last owner that keeps it open
        // while the poller may still report it.
        if let Err(e) = unsafe { poller.add(&slot.stream, Event::readable(key)) } {
            eprintln!("echo-server: cannot watch a connection: {e}");
            lock(&slots).remove(&key);
        }
    }
    Ok(())
}

/// Waits for readable sockets and hands each to the worker pool.
fn poll_loop(poller: &Poller, slots: &Slots, ready: &Sender<Arc<Slot>>) {
    let mut events = Events::new();
    loop {
        events.clear();
        if let Err(e) = poller.wait(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("echo-server: poller failed: {e}");
            return;
        }
        for event in events.iter() {
            let slot = lock(slots).get(&event.key).cloned();
            if let Some(slot) = slot {
                if ready.send(slot).is_err() {
                    return;
                }
            }
        }
    }
}

fn handoff_worker(ready: &Receiver<Arc<Slot>>, poller: &Poller, slots: &Slots) {
    let mut buf = vec![0u8; READ_BUFFER];
    for slot in ready.iter() {
        match serve_readable(&slot, &mut buf) {
            // Re-arm: the one-shot event fires again when more input arrives
            // (or at once, if some already has).
            Ok(true) => {
                if poller
                    .modify(&slot.stream, Event::readable(slot.key))
                    .is_err()
                {
                    close(&slot, poller, slots);
                }
            }
            Ok(false) | Err(_) => close(&slot, poller, slots),
        }
    }
}

/// Reads what is there and echoes every complete line; `false` at end of input.
fn serve_readable(slot: &Slot, buf: &mut [u8]) -> io::Result<bool> {
    let n = match (&slot.stream).read(buf) {
        Ok(0) => return Ok(false),
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(true)
        }
        Err(e) => return Err(e),
    };
    let mut pending = lock(&slot.pending);
    pending.extend_from_slice(&buf[..n]);
    if let Some(last) = pending.iter().rposition(|&b| b == b'\n') {
        write_all_nonblocking(&slot.stream, &pending[..=last])?;
        pending.drain(..=last);
    }
    Ok(pending.len() < MAX_LINE_BYTES)
}

fn write_all_nonblocking(mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(WRITE_BACKOFF),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn close(slot: &Slot, poller: &Poller, slots: &Slots) {
    let _ = poller.delete(&slot.stream);
    lock(slots).remove(&slot.key);
}
