//! The peer's file server under one greedy address (issue 12, item 5), with
//! real `peer serve` processes: clients bound to 127.0.0.2 (the greedy one)
//! and 127.0.0.3 (everyone else). When slots run short the address holding
//! the most yields first, idle connections before busy ones; a client that
//! never reads loses its slot after the write timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use p2p_tests::{wait_until, Peer, Registry, WAIT_TIMEOUT};

const GREEDY: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.3";

/// A TCP connection from `source` (port chosen by the kernel) to `to`;
/// `recv_buffer` shrinks the receive buffer (a client that never reads then
/// stalls the sender sooner).
fn connect_from(source: &str, to: SocketAddr, recv_buffer: Option<usize>) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).expect("bind to 127.0.0.x");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends a GET (keep-alive) and reads one response: status and body. A
/// connection refused with `503` may have closed before the request went out.
fn get(stream: &mut TcpStream, target: &str) -> (u16, Vec<u8>) {
    let _ = stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "response head cut short ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (status, body)
}

/// Whether the server has closed this (silent) connection: end of input
/// (or a reset) rather than a read timeout.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    closed
}

fn file_server(registry: &Registry, files: &[(&str, &[u8])], extra: &[&str]) -> (Peer, SocketAddr) {
    let mut args = vec!["--bind", "127.0.0.1"];
    args.extend_from_slice(extra);
    let peer = Peer::serve(registry, files, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], peer.addr.port()));
    (peer, addr)
}

#[test]
fn an_address_holding_every_slot_with_idle_connections_yields_them() {
    let registry = Registry::start();
    let (_peer, addr) = file_server(
        &registry,
        &[("small.txt", b"hello")],
        &["--max-connections", "4"],
    );

    // Slots are plentiful: one address may take them all.
    let greedy: Vec<TcpStream> = (0..4).map(|_| connect_from(GREEDY, addr, None)).collect();
    // ...but not one more: the address holding the most is refused first.
    let mut fifth = connect_from(GREEDY, addr, None);
    assert_eq!(read_response(&mut fifth).0, 503);

    // Another address is served: one idle greedy connection makes room.
    let mut first = connect_from(OTHER, addr, None);
    assert_eq!(
        get(&mut first, "/files/small.txt"),
        (200, b"hello".to_vec())
    );
    let closed = greedy.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(closed, 1, "exactly one greedy connection yields");

    // Greedy 3, other 1: the other address takes a second slot (3 >= 1 + 2)...
    let mut second = connect_from(OTHER, addr, None);
    assert_eq!(get(&mut second, "/files/small.txt").0, 200);
    assert_eq!(greedy.iter().filter(|s| closed_by_server(s)).count(), 2);
    // ...and then the two hold two each: nobody takes turns closing the other's.
    let mut third = connect_from(OTHER, addr, None);
    assert_eq!(get(&mut third, "/files/small.txt").0, 503);
    assert_eq!(greedy.iter().filter(|s| closed_by_server(s)).count(), 2);
    // The connections kept are still served.
    assert_eq!(get(&mut first, "/files/small.txt").0, 200);
}

#[test]
fn clients_that_never_read_lose_their_slots() {
    let registry = Registry::start();
    let big = vec![0x5au8; 32 * 1024 * 1024];
    let (_peer, addr) = file_server(
        &registry,
        &[("big.bin", &big), ("small.txt", b"hello")],
        &["--max-connections", "2", "--write-timeout", "1s"],
    );

    // Two connections from one address fetch the big file and never read.
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect_from(GREEDY, addr, Some(4096));
            s.write_all(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let mut third = connect_from(GREEDY, addr, None);
    assert_eq!(read_response(&mut third).0, 503, "both slots are held");

    // Another address is served at once: a busy greedy connection yields
    // (none is idle).
    let mut other = connect_from(OTHER, addr, None);
    assert_eq!(
        get(&mut other, "/files/small.txt"),
        (200, b"hello".to_vec())
    );

    // Now each address holds one: a new greedy connection is refused until
    // the write timeout drops the stalled transfer that is left.
    wait_until(
        "the stalled transfer to lose its slot",
        WAIT_TIMEOUT,
        || {
            let mut again = connect_from(GREEDY, addr, None);
            get(&mut again, "/files/small.txt").0 == 200
        },
    );
    // Both stalled transfers were cut short, not completed.
    for stream in &mut stalled {
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        assert!(
            received.len() < big.len(),
            "a stalled transfer got {} bytes: the whole file",
            received.len()
        );
    }
    // The kept connection is still served.
    assert_eq!(get(&mut other, "/files/small.txt").0, 200);
}
