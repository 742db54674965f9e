// Package kvstore owns the tenants' key-value store: the backend interface
// the workers' host functions call, each tenant's namespace and limits, and
// the embedded backend (SQLite in WAL mode through a pure-Go driver, one
// file that every worker process of the machine opens).
package kvstore

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// Errors a backend returns; anything else is the store being unavailable.
var (
	ErrNotFound   = errors.New("kvstore: no such key")
	ErrQuota      = errors.New("kvstore: over the tenant's quota")
	ErrNotInteger = errors.New("kvstore: the value is not a decimal integer, or the sum overflows")
)

// Backend stores the keys of every tenant, each under its namespace.
type Backend interface {
	Get(ctx context.Context, ns string, key []byte) ([]byte, error)
	// Set and Add refuse with ErrQuota a change that takes the namespace's
	// keys and values together past quota bytes (0: no quota).
	Set(ctx context.Context, ns string, key, value []byte, quota int64) error
	Delete(ctx context.Context, ns string, key []byte) error
	Add(ctx context.Context, ns string, key []byte, delta int64, quota int64) (int64, error)
	// List returns up to limit keys beginning with prefix, in byte order.
	List(ctx context.Context, ns string, prefix []byte, limit int) ([][]byte, error)
	Close() error
}

// Limits bound one tenant's store.
type Limits struct {
	MaxValue int   // bytes of one value
	Quota    int64 // bytes of all keys and values together (0: none)
}

// Tenant is one tenant's view of a backend: its namespace and limits.
type Tenant struct {
	Backend Backend
	NS      string
	Limits
}

// addInt is the sum Add stores: the old value (none is 0) plus delta.
func addInt(old []byte, found bool, delta int64) (int64, error) {
	var v int64
	if found {
		var err error
		if v, err = strconv.ParseInt(string(old), 10, 64); err != nil {
			return 0, ErrNotInteger
		}
	}
	sum := v + delta
	if (delta > 0 && sum < v) || (delta < 0 && sum > v) {
		return 0, ErrNotInteger
	}
	return sum, nil
}

// Lazy opens its backend on first use, so a worker whose tenants never
// touch the store never opens it; a failed open is retried after a second.
type Lazy struct {
	open func() (Backend, error)
	mu   sync.Mutex
	b    Backend
	err  error
	at   time.Time
}

// NewLazy returns a backend that calls open when first needed.
func NewLazy(open func() (Backend, error)) *Lazy { return &Lazy{open: open} }

func (l *Lazy) get() (Backend, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b != nil {
		return l.b, nil
	}
	if l.err != nil && time.Since(l.at) < time.Second {
		return nil, l.err
	}
	b, err := l.open()
	if err != nil {
		l.err, l.at = err, time.Now()
		return nil, err
	}
	l.b = b
	return b, nil
}

func (l *Lazy) Get(ctx context.Context, ns string, key []byte) ([]byte, error) {
	b, err := l.get()
	if err != nil {
		return nil, err
	}
	return b.Get(ctx, ns, key)
}

func (l *Lazy) Set(ctx context.Context, ns string, key, value []byte, quota int64) error {
	b, err := l.get()
	if err != nil {
		return err
	}
	return b.Set(ctx, ns, key, value, quota)
}

func (l *Lazy) Delete(ctx context.Context, ns string, key []byte) error {
	b, err := l.get()
	if err != nil {
		return err
	}
	return b.Delete(ctx, ns, key)
}

func (l *Lazy) Add(ctx context.Context, ns string, key []byte, delta int64, quota int64) (int64, error) {
	b, err := l.get()
	if err != nil {
		return 0, err
	}
	return b.Add(ctx, ns, key, delta, quota)
}

func (l *Lazy) List(ctx context.Context, ns string, prefix []byte, limit int) ([][]byte, error) {
	b, err := l.get()
	if err != nil {
		return nil, err
	}
	return b.List(ctx, ns, prefix, limit)
}

func (l *Lazy) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b == nil {
		return nil
	}
	return l.b.Close()
}
