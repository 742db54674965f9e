package kvstore

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/wcluster/wcluster/internal/testfiles"
)

// TestBackends: both backends keep the same semantics: namespaces apart,
// not found, set and overwrite, quota (nothing changed past it), add
// (atomic, not-an-integer, overflow), delete, list by prefix in order.
func TestBackends(t *testing.T) {
	for _, name := range []string{"sqlite", "redis"} {
		t.Run(name, func(t *testing.T) {
			var b Backend
			var err error
			if name == "sqlite" {
				b, err = OpenSQLite(t.TempDir())
			} else {
				url, _ := testfiles.Redis(t)
				b, err = OpenRedis(url)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx := context.Background()
			if _, err := b.Get(ctx, "a", []byte("k")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("get of nothing: %v", err)
			}
			if err := b.Set(ctx, "a", []byte("k"), []byte("one"), 0); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Get(ctx, "a:", []byte("k")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("namespace a: sees a's key: %v", err)
			}
			if err := b.Set(ctx, "a", []byte("k"), []byte("two"), 0); err != nil {
				t.Fatal(err)
			}
			if v, err := b.Get(ctx, "a", []byte("k")); err != nil || string(v) != "two" {
				t.Fatalf("get after overwrite: %q %v", v, err)
			}
			// Quota 20: k+two is 4 bytes; a 20-byte value passes it.
			if err := b.Set(ctx, "a", []byte("big"), bytes.Repeat([]byte("x"), 20), 20); !errors.Is(err, ErrQuota) {
				t.Fatalf("over quota: %v", err)
			}
			if _, err := b.Get(ctx, "a", []byte("big")); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a refused set left a value: %v", err)
			}
			if err := b.Set(ctx, "a", []byte("ok"), bytes.Repeat([]byte("x"), 10), 20); err != nil {
				t.Fatalf("within quota: %v", err)
			}
			for i := 1; i <= 3; i++ {
				if sum, err := b.Add(ctx, "a", []byte("n"), 5, 0); err != nil || sum != int64(5*i) {
					t.Fatalf("add %d: %d %v", i, sum, err)
				}
			}
			if _, err := b.Add(ctx, "a", []byte("k"), 1, 0); !errors.Is(err, ErrNotInteger) {
				t.Fatalf("add to text: %v", err)
			}
			b.Set(ctx, "a", []byte("max"), []byte(strconv.FormatInt(1<<63-1, 10)), 0)
			if _, err := b.Add(ctx, "a", []byte("max"), 1, 0); !errors.Is(err, ErrNotInteger) {
				t.Fatalf("overflow: %v", err)
			}
			if err := b.Delete(ctx, "a", []byte("k")); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, "a", []byte("k")); err != nil {
				t.Fatalf("delete of nothing: %v", err)
			}
			for _, k := range []string{"user/2", "user/1", "user*", "other"} {
				b.Set(ctx, "a", []byte(k), []byte("v"), 0)
			}
			b.Set(ctx, "b", []byte("user/3"), []byte("v"), 0)
			keys, err := b.List(ctx, "a", []byte("user"), 1000)
			var got []string
			for _, k := range keys {
				got = append(got, string(k))
			}
			if err != nil || strings.Join(got, ",") != "user*,user/1,user/2" {
				t.Fatalf("list user: %v %v", got, err)
			}
			if keys, _ := b.List(ctx, "a", []byte("user"), 1); len(keys) != 1 {
				t.Fatalf("list with limit 1: %d keys", len(keys))
			}
		})
	}
}

// TestSQLiteReadsSeeWrites: two stores on one directory, as two worker
// processes open it: every value one acknowledges the other reads at once,
// from 8 goroutines at a time (more than the read connections), empty
// values included; a closed store refuses reads.
func TestSQLiteReadsSeeWrites(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenSQLite(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenSQLite(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 2 * maxReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []byte("k" + strconv.Itoa(g))
			for i := range 50 {
				want := strconv.Itoa(i)
				if i%10 == 0 {
					want = ""
				}
				if err := a.Set(ctx, "ns", key, []byte(want), 0); err != nil {
					t.Errorf("set: %v", err)
					return
				}
				if v, err := b.Get(ctx, "ns", key); err != nil || string(v) != want || v == nil {
					t.Errorf("%s: got %q (nil %v), %v after setting %q", key, v, v == nil, err, want)
					return
				}
			}
			if err := a.Delete(ctx, "ns", key); err != nil {
				t.Errorf("delete: %v", err)
			}
			if _, err := b.Get(ctx, "ns", key); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s after delete: %v", key, err)
			}
		}()
	}
	wg.Wait()
	b.Close()
	if _, err := b.Get(ctx, "ns", []byte("k0")); err == nil {
		t.Fatal("a closed store answered a read")
	}
}

// BenchmarkSQLiteGet: a GET of a small key on the embedded store, from as
// many goroutines as a worker runs instances.
func BenchmarkSQLiteGet(b *testing.B) {
	s, err := OpenSQLite(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	key := []byte("small")
	if err := s.Set(ctx, "tenant", key, []byte("a small value"), 0); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if v, err := s.Get(ctx, "tenant", key); err != nil || len(v) != 13 {
				b.Errorf("get: %q %v", v, err)
				return
			}
		}
	})
}
