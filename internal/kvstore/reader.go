package kvstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	"modernc.org/libc/sys/types"
	sqlite3 "modernc.org/sqlite/lib"
)

// GET is the store's hot path: a kv_get costs the caller one read of the
// store. database/sql's pool, statement and rows, and the driver's
// per-query allocations (rows, column names, C copies of the arguments),
// cost nearly half of that, so reads go to connections of their own,
// opened with SQLite's C API as the driver transpiles it (modernc.org/sqlite/lib):
// each with the query prepared once, its arguments copied into one buffer
// of C memory and bound in place, and no mutex of its own (one goroutine
// uses a reader at a time). Each read is its own transaction (SQLite's
// autocommit, ended by the reset): it sees every write committed before it
// began, in any process, so nothing is cached between reads.

// maxReaders bounds the read connections of one store (each has a page
// cache of its own, up to SQLite's 2 MB): a worker runs a few reads at
// once per core, and a read waits for a free connection rather than open
// more.
const maxReaders = 4

// reader is one read connection, used by one goroutine at a time.
type reader struct {
	tls  *libc.TLS
	db   uintptr // sqlite3*
	stmt uintptr // sqlite3_stmt*: getQuery
	buf  uintptr // C memory the arguments are copied to
	cap  int
}

const getQuery = `SELECT v FROM kv WHERE ns = ?1 AND k = ?2`

// readers are a store's idle read connections and how many are open.
type readers struct {
	path string // the database file
	idle chan *reader

	mu     sync.Mutex // mu guards open and closed
	open   int
	closed bool
}

func newReaders(path string) *readers {
	return &readers{path: path, idle: make(chan *reader, maxReaders)}
}

// errClosed is what a read on a closed store gets.
var errClosed = errors.New("kvstore: closed")

// take returns an idle reader, opens one while fewer than maxReaders are
// open, or waits (at most the store's 5 s) for one to come back.
func (rs *readers) take() (*reader, error) {
	select {
	case r := <-rs.idle:
		return r, nil
	default:
	}
	rs.mu.Lock()
	if rs.closed {
		rs.mu.Unlock()
		return nil, errClosed
	}
	if rs.open < maxReaders {
		rs.open++
		rs.mu.Unlock()
		r, err := dial(rs.path)
		if err != nil {
			rs.mu.Lock()
			rs.open--
			rs.mu.Unlock()
			return nil, err
		}
		return r, nil
	}
	rs.mu.Unlock()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case r := <-rs.idle:
		return r, nil
	case <-t.C:
		return nil, fmt.Errorf("kvstore: no read connection free within 5s")
	}
}

// dial opens a read connection to the database at path, which exists (in
// WAL mode, which the file keeps) and prepares getQuery.
func dial(path string) (r *reader, err error) {
	r = &reader{tls: libc.NewTLS()}
	defer func() {
		if err != nil {
			r.close()
			r = nil
		}
	}()
	slot, err := r.malloc(int(unsafe.Sizeof(uintptr(0))))
	if err != nil {
		return nil, err
	}
	defer libc.Xfree(r.tls, slot)
	cpath, err := libc.CString(path)
	if err != nil {
		return nil, err
	}
	rc := sqlite3.Xsqlite3_open_v2(r.tls, cpath, slot, sqlite3.SQLITE_OPEN_READWRITE|sqlite3.SQLITE_OPEN_NOMUTEX, 0)
	libc.Xfree(r.tls, cpath)
	r.db = loadPointer(slot)
	if rc != sqlite3.SQLITE_OK {
		return nil, r.error("open", rc)
	}
	sqlite3.Xsqlite3_busy_timeout(r.tls, r.db, 5000)
	csql, err := libc.CString(getQuery)
	if err != nil {
		return nil, err
	}
	rc = sqlite3.Xsqlite3_prepare_v2(r.tls, r.db, csql, -1, slot, 0)
	libc.Xfree(r.tls, csql)
	if rc != sqlite3.SQLITE_OK {
		return nil, r.error("prepare", rc)
	}
	r.stmt = loadPointer(slot)
	return r, nil
}

func (r *reader) malloc(n int) (uintptr, error) {
	p := libc.Xmalloc(r.tls, types.Size_t(n))
	if p == 0 {
		return 0, fmt.Errorf("kvstore: cannot allocate %d bytes of C memory", n)
	}
	return p, nil
}

// loadPointer reads the pointer SQLite wrote at p.
func loadPointer(p uintptr) uintptr {
	b := libc.GoBytes(p, int(unsafe.Sizeof(uintptr(0))))
	if len(b) == 8 {
		return uintptr(binary.NativeEndian.Uint64(b))
	}
	return uintptr(binary.NativeEndian.Uint32(b))
}

// error is SQLite's message for rc.
func (r *reader) error(op string, rc int32) error {
	msg := ""
	if r.db != 0 {
		msg = libc.GoString(sqlite3.Xsqlite3_errmsg(r.tls, r.db))
	}
	return fmt.Errorf("kvstore: sqlite %s: %s (code %d)", op, msg, rc)
}

// put gives r back, or closes it when it failed (its connection may be
// broken) or the store is closed.
func (rs *readers) put(r *reader, failed bool) {
	rs.mu.Lock()
	closed := rs.closed
	rs.mu.Unlock()
	if !failed && !closed {
		select {
		case rs.idle <- r:
			return
		default:
		}
	}
	r.close()
	rs.mu.Lock()
	rs.open--
	rs.mu.Unlock()
}

func (r *reader) close() {
	if r.stmt != 0 {
		sqlite3.Xsqlite3_finalize(r.tls, r.stmt)
	}
	if r.db != 0 {
		sqlite3.Xsqlite3_close_v2(r.tls, r.db)
	}
	if r.buf != 0 {
		libc.Xfree(r.tls, r.buf)
	}
	r.tls.Close()
}

// close closes the idle readers; those in use are closed when put back.
func (rs *readers) close() {
	rs.mu.Lock()
	rs.closed = true
	rs.mu.Unlock()
	for {
		select {
		case r := <-rs.idle:
			r.close()
		default:
			return
		}
	}
}

// lookup reads the value of key in ns.
func (r *reader) lookup(ns string, key []byte) ([]byte, error) {
	n := len(ns) + len(key)
	if n > r.cap {
		c := max(n, 256)
		p, err := r.malloc(c)
		if err != nil {
			return nil, err
		}
		if r.buf != 0 {
			libc.Xfree(r.tls, r.buf)
		}
		r.buf, r.cap = p, c
	}
	args := libc.GoBytes(r.buf, n)
	copy(args, ns)
	copy(args[len(ns):], key)
	// SQLITE_STATIC (0): SQLite reads the buffer in place until the reset.
	if rc := sqlite3.Xsqlite3_bind_text(r.tls, r.stmt, 1, r.buf, int32(len(ns)), 0); rc != sqlite3.SQLITE_OK {
		return nil, r.error("bind", rc)
	}
	if rc := sqlite3.Xsqlite3_bind_blob(r.tls, r.stmt, 2, r.buf+uintptr(len(ns)), int32(len(key)), 0); rc != sqlite3.SQLITE_OK {
		return nil, r.error("bind", rc)
	}
	var v []byte
	var err error
	switch rc := sqlite3.Xsqlite3_step(r.tls, r.stmt); rc {
	case sqlite3.SQLITE_ROW:
		p := sqlite3.Xsqlite3_column_blob(r.tls, r.stmt, 0)
		v = make([]byte, sqlite3.Xsqlite3_column_bytes(r.tls, r.stmt, 0))
		if len(v) > 0 {
			copy(v, libc.GoBytes(p, len(v)))
		}
	case sqlite3.SQLITE_DONE:
		err = ErrNotFound
	default:
		err = r.error("step", rc)
	}
	// The reset ends the read transaction (its error is the step's).
	sqlite3.Xsqlite3_reset(r.tls, r.stmt)
	return v, err
}
