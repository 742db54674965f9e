//! hello: an HTTP/1.1 handler answering every request `200 hello world\n`
//! with the header `X-Wcluster-Worker` naming the worker (the Rust twin of
//! guests/go/hello). It honours keep-alive and pipelining, and holds no
//! instance between requests (it returns `Keep`).

use std::cell::RefCell;
use wcluster::{Action, Conn, Flags};

/// The largest request head (plus body) this handler buffers.
const MAX_HEADER: usize = 32 << 10;

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Scratch buffers, reused by later calls on this instance. They hold nothing
/// that outlives a call: the unanswered tail goes back to the host (unread).
struct Buffers {
    input: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers {
        input: vec![0; MAX_HEADER],
        out: Vec::with_capacity(4096),
    });
}

fn handle(flags: Flags) -> Action {
    BUFFERS.with(|b| {
        let b = &mut *b.borrow_mut();
        b.out.clear();
        let action = serve(flags, &mut b.input, &mut b.out);
        if !b.out.is_empty() && Conn::new().write_raw(&b.out).is_err() {
            return Action::Close;
        }
        action
    })
}

wcluster::handler!(handle);

/// Reads what the peer sent (once), answers every complete request in it
/// (into `out`, written by the caller in one go) and pushes an incomplete
/// tail back for the next call: a request arriving in pieces holds no
/// instance while the rest is on its way.
fn serve(flags: Flags, input: &mut [u8], out: &mut Vec<u8>) -> Action {
    let conn = Conn::new();
    let n = match conn.read_raw(input) {
        Ok(n) if n > 0 => n,
        _ => return Action::Close, // end of stream or error
    };
    let mut buf = &input[..n];
    loop {
        match parse(buf) {
            Parse::Bad => {
                out.extend_from_slice(BAD_REQUEST);
                return Action::Close;
            }
            Parse::Incomplete => break,
            Parse::Request { size, keep_alive } => {
                let keep = keep_alive && !flags.is_draining();
                respond(out, keep);
                if !keep {
                    return Action::Close;
                }
                buf = &buf[size..];
            }
        }
    }
    if buf.is_empty() {
        return Action::Keep;
    }
    if buf.len() == input.len() {
        // A buffer full of one unfinished request: its head is too large.
        out.extend_from_slice(TOO_LARGE);
        return Action::Close;
    }
    if conn.unread(buf).is_err() {
        return Action::Close;
    }
    Action::Keep
}

fn respond(out: &mut Vec<u8>, keep: bool) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: ",
    );
    push_decimal(out, wcluster::worker_id());
    if !keep {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\nhello world\n");
}

fn push_decimal(out: &mut Vec<u8>, mut v: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// More bytes are needed.
    Incomplete,
    /// A request this handler cannot serve.
    Bad,
    /// One complete request of `size` bytes (head and body) at the start.
    Request { size: usize, keep_alive: bool },
}

/// Finds one complete request at the start of `b`.
fn parse(b: &[u8]) -> Parse {
    let end = match find(b, b"\r\n\r\n") {
        Some(e) => e,
        None => return Parse::Incomplete,
    };
    let mut lines = b[..end].split(|&c| c == b'\n');
    let line = trim_cr(lines.next().unwrap_or(b""));
    let version = match line.iter().rposition(|&c| c == b' ') {
        Some(sp) => &line[sp + 1..],
        None => return Parse::Bad,
    };
    if !version.starts_with(b"HTTP/1.") {
        return Parse::Bad;
    }
    let mut keep_alive = version == b"HTTP/1.1";
    let mut body = 0usize;
    for h in lines {
        let h = trim_cr(h);
        let colon = match h.iter().position(|&c| c == b':') {
            Some(c) => c,
            None => return Parse::Bad,
        };
        let (name, value) = (&h[..colon], trim(&h[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            body = match parse_decimal(value) {
                Some(v) => v,
                None => return Parse::Bad,
            };
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parse::Bad; // chunked request bodies are not served
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&c| c == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                    break;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let size = match (end + 4).checked_add(body) {
        Some(s) if s <= MAX_HEADER => s,
        _ => return Parse::Bad, // body larger than the buffer: not served by hello
    };
    if size > b.len() {
        return Parse::Incomplete;
    }
    Parse::Request { size, keep_alive }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_cr(b: &[u8]) -> &[u8] {
    match b.last() {
        Some(b'\r') => &b[..b.len() - 1],
        _ => b,
    }
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let Some((first, rest)) = b.split_first() {
        if !first.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    while let Some((last, rest)) = b.split_last() {
        if !last.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    b
}

fn parse_decimal(b: &[u8]) -> Option<usize> {
    if b.is_empty() {
        return None;
    }
    let mut v = 0usize;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as usize)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x"), Parse::Incomplete);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET"),
            Parse::Request { size: 27, keep_alive: true }
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"),
            Parse::Request { size: 37, keep_alive: false }
        );
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\n\r\n"),
            Parse::Request { size: 18, keep_alive: false }
        );
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"),
            Parse::Request { size: 42, keep_alive: true }
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Parse::Incomplete
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Parse::Request { size: 41, keep_alive: true }
        );
        assert_eq!(parse(b"garbage\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"), Parse::Bad);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Parse::Bad);
    }

    #[test]
    fn decimal() {
        let mut v = Vec::new();
        push_decimal(&mut v, 0);
        push_decimal(&mut v, 42);
        push_decimal(&mut v, u32::MAX);
        assert_eq!(v, b"0424294967295");
    }
}
