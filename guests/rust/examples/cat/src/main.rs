//! cat: a plain WASI command handler (the Rust twin of guests/go/catcmd). It
//! copies stdin (the connection) to stdout (the connection) and exits at end
//! of stream. It imports nothing from `wcluster`: any WASI program written
//! this way is a handler.

use std::io::{self, Write};
use std::process;

/// Passes every chunk straight through: std's stdout is line-buffered, which
/// would hold back binary data until a newline or exit.
struct Unbuffered<W: Write>(W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.0.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn main() {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = Unbuffered(stdout.lock());
    if io::copy(&mut stdin.lock(), &mut out).is_err() {
        process::exit(1);
    }
}
