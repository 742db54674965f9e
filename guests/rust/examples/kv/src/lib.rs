//! kv: an HTTP key-value API on wcluster's key-value store (the Rust twin of
//! guests/go/kv), one request per call: a kept-alive connection holds no
//! instance between requests.
//!
//! ```text
//! PUT /kv/KEY (body: the value) -> 204
//! GET /kv/KEY -> 200 with the value, or 404
//! DELETE /kv/KEY -> 204
//! POST /kv/KEY?add=N -> 200 with the new integer value
//! GET /kv/?prefix=P -> 200, the keys beginning with P, one per line
//! ```
//!
//! KEY and P are percent-decoded. 413 for a key or value over the store's
//! limits or its quota, 503 while the store is unavailable. Every answer
//! names the worker (`X-Wcluster-Worker`); `Connection: close` when the
//! request asks for it or the worker is draining. Every complete request in
//! what was read is answered; an incomplete tail is pushed back.

use std::cell::RefCell;
use std::ops::Range;
use wcluster::{Action, Conn, Error, Flags};

/// The largest request head; a longer one gets 431.
const MAX_HEAD: usize = 16 << 10;
/// The largest request body; a longer one gets 413.
const MAX_BODY: usize = 16 << 20;

thread_local! {
    /// The bytes read in a call, reused by later calls on this instance.
    /// Nothing in it outlives a call: an unanswered tail goes back to the host.
    static INPUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_HEAD));
}

fn handle(flags: Flags) -> Action {
    INPUT.with(|b| serve(flags, &mut b.borrow_mut()))
}

wcluster::handler!(handle);

fn serve(flags: Flags, input: &mut Vec<u8>) -> Action {
    let conn = Conn::new();
    input.clear();
    let mut off = 0;
    loop {
        let parsed = parse(&input[off..]);
        let complete = match &parsed {
            Parse::Incomplete => false,
            Parse::Request(r) => r.size <= input.len() - off,
            Parse::Refused(..) => true,
        };
        if !complete && off > 0 {
            // Answered what was complete; the rest waits for the next call.
            return match conn.unread(&input[off..]) {
                Ok(()) => Action::Keep,
                Err(_) => Action::Close,
            };
        }
        let req = match parsed {
            Parse::Incomplete => {
                // Only the head's room: what is read ahead stays small.
                let start = input.len();
                input.resize(MAX_HEAD, 0);
                match conn.read_raw(&mut input[start..]) {
                    Ok(m) if m > 0 => input.truncate(start + m),
                    _ => return Action::Close, // end of stream or error
                }
                continue;
            }
            Parse::Refused(code, msg) => {
                answer(&conn, code, msg.as_bytes(), false);
                return Action::Close;
            }
            Parse::Request(r) => r,
        };
        if !complete {
            // The first request's body (off is 0): read exactly the rest.
            let start = input.len();
            input.resize(req.size, 0);
            let mut got = start;
            while got < req.size {
                match conn.read_raw(&mut input[got..]) {
                    Ok(m) if m > 0 => got += m,
                    _ => return Action::Close,
                }
            }
        }
        let r = &input[off..off + req.size];
        let (code, body) = route(&r[req.method.clone()], &r[req.target.clone()], &r[req.body.clone()]);
        let keep = req.keep_alive && !flags.is_draining();
        if !answer(&conn, code, &body, keep) || !keep {
            return Action::Close;
        }
        off += req.size;
        if off == input.len() {
            return Action::Keep;
        }
    }
}

/// Writes one answer; false if the connection failed.
fn answer(conn: &Conn, code: u16, body: &[u8], keep: bool) -> bool {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nX-Wcluster-Worker: {}\r\n{}\r\n",
        code,
        reason(code),
        body.len(),
        wcluster::worker_id(),
        if keep { "" } else { "Connection: close\r\n" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    conn.write_raw(&out).is_ok()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Runs one request against the store: its status and body.
fn route(method: &[u8], target: &[u8], body: &[u8]) -> (u16, Vec<u8>) {
    let (path, query) = match target.iter().position(|&c| c == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    let key = match path.strip_prefix(b"/kv/") {
        Some(k) => k,
        None => return (404, b"not found: use /kv/KEY\n".to_vec()),
    };
    let key = match unescape(key, false) {
        Some(k) => k,
        None => return (400, b"bad percent-escape in the key\n".to_vec()),
    };
    match method {
        b"GET" if key.is_empty() => {
            let prefix = match query_param(query, b"prefix").map(|p| unescape(p, true)) {
                Some(None) => return (400, b"bad prefix\n".to_vec()),
                Some(Some(p)) => p,
                None => Vec::new(),
            };
            match wcluster::kv_list(&prefix) {
                Ok(keys) => {
                    let mut out = Vec::new();
                    for k in keys {
                        out.extend_from_slice(&k);
                        out.push(b'\n');
                    }
                    (200, out)
                }
                Err(e) => failed(e),
            }
        }
        b"GET" => match wcluster::kv_get(&key) {
            Ok(Some(v)) => (200, v),
            Ok(None) => (404, Vec::new()),
            Err(e) => failed(e),
        },
        b"PUT" => match wcluster::kv_set(&key, body) {
            Ok(()) => (204, Vec::new()),
            Err(e) => failed(e),
        },
        b"DELETE" => match wcluster::kv_delete(&key) {
            Ok(()) => (204, Vec::new()),
            Err(e) => failed(e),
        },
        b"POST" if query_param(query, b"add").is_some() => {
            let delta = query_param(query, b"add")
                .and_then(|a| unescape(a, true))
                .and_then(|a| String::from_utf8(a).ok())
                .and_then(|a| a.parse::<i64>().ok());
            let delta = match delta {
                Some(d) => d,
                None => return (400, b"add: give an integer\n".to_vec()),
            };
            match wcluster::kv_add(&key, delta) {
                Ok(sum) => (200, format!("{}\n", sum).into_bytes()),
                Err(e) => failed(e),
            }
        }
        _ => (405, Vec::new()),
    }
}

/// The answer for a store error.
fn failed(e: Error) -> (u16, Vec<u8>) {
    let code = match e {
        Error::NotFound => 404,
        Error::TooLarge | Error::Quota => 413,
        Error::Unavailable => 503,
        Error::Invalid => 409,
        _ => 500,
    };
    (code, format!("{}\n", e).into_bytes())
}

/// The raw value of the query parameter `name` (empty when it has no `=`).
fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&c| c == b'&').find_map(|p| match p.iter().position(|&c| c == b'=') {
        Some(e) if &p[..e] == name => Some(&p[e + 1..]),
        None if p == name => Some(&p[p.len()..]),
        _ => None,
    })
}

/// Percent-decodes `s` (`+` is a space in a query); `None` for a bad escape.
fn unescape(s: &[u8], query: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hi = hex(*s.get(i + 1)?)?;
                let lo = hex(*s.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// One request, its parts as ranges of the bytes it was parsed from.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: Range<usize>,
    target: Range<usize>,
    body: Range<usize>,
    /// Head and body bytes.
    size: usize,
    keep_alive: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// The head is not complete yet.
    Incomplete,
    /// A request this handler does not serve: the status and a message.
    Refused(u16, &'static str),
    /// A complete head (its body may still be arriving: see `size`).
    Request(Request),
}

/// Parses the request head at the start of `b`.
fn parse(b: &[u8]) -> Parse {
    let end = match find(b, b"\r\n\r\n") {
        Some(e) => e,
        None if b.len() >= MAX_HEAD => return Parse::Refused(431, ""),
        None => return Parse::Incomplete,
    };
    // The request line: "METHOD TARGET HTTP/1.x".
    let le = find(b, b"\r\n").unwrap_or(end);
    let line = &b[..le];
    let mut parts = line.split(|&c| c == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Parse::Refused(400, ""),
    };
    if version.len() != 8 || !version.starts_with(b"HTTP/1.") {
        return Parse::Refused(400, "");
    }
    let mut keep_alive = version == b"HTTP/1.1";
    let mut body = 0usize;
    if le < end {
        for h in b[le + 2..end].split(|&c| c == b'\n') {
            let h = h.strip_suffix(b"\r").unwrap_or(h);
            let colon = match h.iter().position(|&c| c == b':') {
                Some(c) => c,
                None => return Parse::Refused(400, ""),
            };
            let (name, value) = (&h[..colon], trim(&h[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                body = match parse_decimal(value) {
                    Some(v) if v <= MAX_BODY => v,
                    Some(_) => return Parse::Refused(413, ""),
                    None => return Parse::Refused(400, ""),
                };
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Parse::Refused(501, "chunked request bodies are not served: send Content-Length\n");
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&c| c == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
    }
    let m = method.len();
    Parse::Request(Request {
        method: 0..m,
        target: m + 1..m + 1 + target.len(),
        body: end + 4..end + 4 + body,
        size: end + 4 + body,
        keep_alive,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !first.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
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
        assert_eq!(parse(b"GET /kv/a HTTP/1.1\r\nHost: x"), Parse::Incomplete);
        let b = b"PUT /kv/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab";
        match parse(b) {
            Parse::Request(r) => {
                assert_eq!((&b[r.method], &b[r.target]), (&b"PUT"[..], &b"/kv/a"[..]));
                assert_eq!((r.body, r.size, r.keep_alive), (41..44, 44, true));
            }
            p => panic!("{:?}", p),
        }
        match parse(b"GET / HTTP/1.0\r\n\r\n") {
            Parse::Request(r) => assert_eq!((r.size, r.keep_alive), (18, false)),
            p => panic!("{:?}", p),
        }
        match parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n") {
            Parse::Request(r) => assert!(!r.keep_alive),
            p => panic!("{:?}", p),
        }
        assert_eq!(parse(b"garbage\r\n\r\n"), Parse::Refused(400, ""));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"), Parse::Refused(413, ""));
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Parse::Refused(501, _)));
    }

    #[test]
    fn queries_and_escapes() {
        assert_eq!(query_param(b"a=1&prefix=x%20y", b"prefix"), Some(&b"x%20y"[..]));
        assert_eq!(query_param(b"add", b"add"), Some(&b""[..]));
        assert_eq!(query_param(b"adder=1", b"add"), None);
        assert_eq!(unescape(b"a%2Fb+c", true), Some(b"a/b c".to_vec()));
        assert_eq!(unescape(b"a+b", false), Some(b"a+b".to_vec()));
        assert_eq!(unescape(b"%zz", false), None);
        assert_eq!(unescape(b"%4", false), None);
    }

    #[test]
    fn routes_without_a_store() {
        assert_eq!(route(b"GET", b"/other", b"").0, 404);
        assert_eq!(route(b"GET", b"/kv/%", b"").0, 400);
        assert_eq!(route(b"PATCH", b"/kv/a", b"").0, 405);
        assert_eq!(route(b"POST", b"/kv/a?add=x", b"").0, 400);
        // Off wasm the store is unavailable.
        assert_eq!(route(b"GET", b"/kv/a", b"").0, 503);
    }
}
