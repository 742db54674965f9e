//! echo: a raw echo handler (the Rust twin of guests/go/echo). Every byte read
//! is written back until the peer half-closes (or the read fails); then the
//! handler half-closes too and returns `Close`.

use std::cell::RefCell;
use wcluster::{Action, Conn, Flags};

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 << 10]);
}

fn echo(_flags: Flags) -> Action {
    let conn = Conn::new();
    BUF.with(|b| {
        let buf = &mut b.borrow_mut()[..];
        loop {
            let n = match conn.read_raw(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if conn.write_raw(&buf[..n]).is_err() {
                return Action::Close;
            }
        }
        let _ = conn.close_write();
        Action::Close
    })
}

wcluster::handler!(echo);
