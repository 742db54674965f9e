// Package tickets owns the TLS session ticket keys of a cluster's tenants:
// made in the master, rotated on a schedule with the previous keys kept to
// decrypt tickets issued before, and their encoding for the workers (a
// versioned contract: every worker of a tenant gets the same keys, so a
// session resumes on whichever worker the next connection reaches).
package tickets

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// Version is the layout of Keys on the wire.
const Version = 1

// Keep is how many keys a tenant holds: the current one, which encrypts new
// tickets, and the ones before it, which still decrypt. With rotation every
// R, a ticket resumes for between (Keep-1)·R and Keep·R after it was issued.
const Keep = 3

// Keys are the ticket keys of some tenants, by tenant name, current first.
type Keys struct {
	Version int                   `json:"version"`
	Tenants map[string][][32]byte `json:"tenants"`
}

// Encode is the form Keys travel in to a worker.
func (k Keys) Encode() []byte {
	k.Version = Version
	b, _ := json.Marshal(k) // arrays of bytes and strings: cannot fail
	return b
}

// Decode reads what Encode wrote; nothing (an empty b) is no keys.
func Decode(b []byte) (Keys, error) {
	var k Keys
	if len(b) == 0 {
		return k, nil
	}
	if err := json.Unmarshal(b, &k); err != nil {
		return k, fmt.Errorf("ticket keys: %w", err)
	}
	if k.Version != Version {
		return k, fmt.Errorf("ticket keys of version %d, this binary reads %d: the master and its workers are different binaries", k.Version, Version)
	}
	return k, nil
}

// Ring holds every tenant's keys in the master. It is safe for concurrent
// use (rotation runs beside reloads).
type Ring struct {
	mu   sync.Mutex
	keys map[string][][32]byte
}

// NewRing returns an empty ring.
func NewRing() *Ring { return &Ring{keys: map[string][][32]byte{}} }

// For returns the keys of the named tenants, making a first key for a
// tenant it has not seen (a tenant a reload added keeps its keys after).
func (r *Ring) For(names []string) Keys {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := Keys{Version: Version, Tenants: make(map[string][][32]byte, len(names))}
	for _, n := range names {
		if len(r.keys[n]) == 0 {
			r.keys[n] = [][32]byte{newKey()}
		}
		k.Tenants[n] = slices.Clone(r.keys[n])
	}
	return k
}

// Rotate gives every tenant a new current key and drops keys past Keep.
func (r *Ring) Rotate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n, ks := range r.keys {
		r.keys[n] = append([][32]byte{newKey()}, ks[:min(len(ks), Keep-1)]...)
	}
}

// Forget drops the keys of tenants not named (removed by a reload).
func (r *Ring) Forget(keep []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range r.keys {
		if !slices.Contains(keep, n) {
			delete(r.keys, n)
		}
	}
}

func newKey() [32]byte {
	var k [32]byte
	rand.Read(k[:]) // never fails (crypto/rand panics rather)
	return k
}
