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
package host
