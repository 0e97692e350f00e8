//! Just enough of Redis's RESP reply format to know when a reply is complete,
//! whether it is an error, and how many items it carries.
//!
//! Commands go out as inline commands (`SMEMBERS key\r\n`), which Redis
//! accepts from any client; only replies need parsing.

use std::io::{self, BufRead};

/// Deepest nesting of arrays accepted, so a broken server cannot recurse us away.
const MAX_DEPTH: usize = 8;

/// Longest header line (`*<n>`, `$<n>`, `+...`, `-...`) accepted.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Largest bulk string accepted (Redis's own limit is 512 MiB).
const MAX_BULK: i64 = 512 << 20;

/// What one reply said, in summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The reply was `-ERR ...`.
    pub error: bool,
    /// Items of a top-level array, the value of an integer, 1 for a
    /// non-null string, 0 for a null.
    pub items: i64,
}

/// Reads one whole reply from `reader`, using `line` as scratch space.
pub fn read_reply<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<Summary> {
    read_value(reader, line, 0)
}

fn read_value<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, depth: usize) -> io::Result<Summary> {
    if depth > MAX_DEPTH {
        return Err(invalid("RESP arrays nested too deeply"));
    }
    read_header(reader, line)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| invalid("empty RESP line"))?;
    match kind {
        b'+' => Ok(Summary {
            error: false,
            items: 1,
        }),
        b'-' => Ok(Summary {
            error: true,
            items: 0,
        }),
        b':' => Ok(Summary {
            error: false,
            items: parse_int(rest)?,
        }),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Summary {
                    error: false,
                    items: 0,
                });
            }
            if len > MAX_BULK {
                return Err(invalid("RESP bulk string too long"));
            }
            skip_exact(reader, len as u64 + 2)?;
            Ok(Summary {
                error: false,
                items: 1,
            })
        }
        b'*' => {
            let count = parse_int(rest)?;
            for _ in 0..count.max(0) {
                read_value(reader, line, depth + 1)?;
            }
            Ok(Summary {
                error: false,
                items: count.max(0),
            })
        }
        _ => Err(invalid("unknown RESP type byte")),
    }
}

/// One `\r\n`-terminated line into `line`, without its ending.
fn read_header<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = io::Read::take(&mut *reader, MAX_HEADER_LINE as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "Redis closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("RESP line too long or cut short"));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

fn skip_exact<R: BufRead>(reader: &mut R, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection inside a reply",
            ));
        }
        let take = available
            .len()
            .min(usize::try_from(n).unwrap_or(usize::MAX));
        reader.consume(take);
        n -= take as u64;
    }
    Ok(())
}

fn parse_int(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad RESP integer"))
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Summary> {
        read_reply(&mut io::BufReader::new(bytes), &mut Vec::new())
    }

    #[test]
    fn summarises_each_kind() {
        assert_eq!(parse(b"+OK\r\n").unwrap().items, 1);
        assert!(parse(b"-ERR wrong\r\n").unwrap().error);
        assert_eq!(parse(b":5\r\n").unwrap().items, 5);
        assert_eq!(parse(b"$-1\r\n").unwrap().items, 0);
        assert_eq!(parse(b"$3\r\nabc\r\n").unwrap().items, 1);
        assert_eq!(parse(b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n").unwrap().items, 2);
        assert_eq!(parse(b"*0\r\n").unwrap().items, 0);
    }

    #[test]
    fn reads_exactly_one_reply() {
        let mut reader = io::BufReader::new(&b"*1\r\n$1\r\nx\r\n:7\r\n"[..]);
        let mut line = Vec::new();
        assert_eq!(read_reply(&mut reader, &mut line).unwrap().items, 1);
        assert_eq!(read_reply(&mut reader, &mut line).unwrap().items, 7);
        assert!(read_reply(&mut reader, &mut line).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"$5\r\nab").is_err());
        assert!(parse(b":x\r\n").is_err());
    }
}
