//! An http-wasm handler in Rust (SDK: `../../httpwasm`), the twin of
//! guests/go/hwhello: it refuses requests without an `X-Api-Key` equal to
//! its configuration when it has one (401), answers `/hello` itself ("hello
//! world"), and passes every other request on to the host's next handler
//! (with wcluster, the `--upstream`) with `X-Guest: rust` added; the
//! response function logs an upstream that failed.

use httpwasm::{Next, Request, Response};

fn serve(req: Request, resp: Response) -> Next {
    let key = httpwasm::config();
    if !key.is_empty() && req.headers().get("X-Api-Key").map(String::into_bytes) != Some(key) {
        resp.set_status_code(401);
        resp.headers().set("Content-Type", "text/plain");
        resp.body().write(b"missing or wrong X-Api-Key\n");
        return Next::Done;
    }
    if req.uri() == "/hello" {
        resp.headers().set("Content-Type", "text/plain");
        resp.body().write(b"hello world");
        return Next::Done;
    }
    req.headers().set("X-Guest", "rust");
    Next::Continue(7)
}

fn after(req: Request, _: Response, req_ctx: u32, is_error: bool) {
    if req_ctx == 7 && is_error && httpwasm::log_enabled(httpwasm::Level::Warn) {
        httpwasm::log(httpwasm::Level::Warn, &format!("next failed for {}", req.uri()));
    }
}

httpwasm::handler!(serve, after);
