// Package host owns the worker side of a handler: the wazero runtime, the
// compilation cache, the pool of guest instances, the host functions of the
// wcluster ABI, and the limits every guest runs under.
//
// A Handler is created once per handler per worker process. ServeConn serves
// one connection: it lends an instance for each call of the guest's
// wcluster_handle, parks the connection without an instance between calls,
// and returns when the connection is closed. A guest that traps, overruns its
// time limit or exhausts its memory costs only the connection it was serving:
// its instance is discarded and the worker goes on.
//
// Plain WASI command modules (exporting _start) get a fresh instance per
// connection, with stdin and stdout bound to it.
//
// http-wasm guests (importing http_handler) are served over HTTP by the
// host: a fast path of its own for simple HTTP/1.1 requests on plaintext
// connections, net/http's server for everything else (HTTP/2 on TLS), a
// pooled instance per request, and the next handler a reverse proxy to
// Options.Upstream.
//
// A Router serves several tenants (each a Handler with its own limits,
// environment, config values and mount) on a worker group's listeners: it
// routes each request by its HTTP Host header (parsed strictly, and framed,
// so a guest reads its own request unchanged and nothing after it) or a
// connection by its TLS SNI, and terminates TLS with the tenant's
// certificate, so guests see plaintext and never hold keys.
//
// Guest linear memory is allocated by the host and charged to Budgets: one
// per worker, shared by all its Handlers, and one per Handler. Growth past a
// budget fails like growth past the instance's limit; a call that needs a
// new instance the budget cannot hold waits, boundedly, for memory to free.
//
// A guest gets nothing it was not given: no filesystem unless a directory is
// mounted (read-only, at MountPoint), no environment but Options.Env, no
// socket but its connection.
package host
