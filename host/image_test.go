package host

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/internal/instrument"
)

// TestMemImage: the image is sealed (no one can write, grow or shrink it),
// each mapping starts with its bytes, and a write to one mapping is that
// mapping's alone.
func TestMemImage(t *testing.T) {
	img := newMemImage(&instrument.Image{Size: 70005, Chunks: []instrument.Chunk{{Off: 10, Bytes: []byte("hello")}, {Off: 70000, Bytes: []byte("world")}}})
	defer img.close()
	if img.fd < 0 {
		t.Fatal("no memfd: the image is copied instead of mapped")
	}
	if _, err := unix.Pwrite(img.fd, []byte("x"), 10); !errors.Is(err, unix.EPERM) {
		t.Errorf("a write to the image: %v, want EPERM (sealed)", err)
	}
	if err := unix.Ftruncate(img.fd, 1<<20); !errors.Is(err, unix.EPERM) {
		t.Errorf("growing the image: %v, want EPERM (sealed)", err)
	}
	mapping := func() []byte {
		b, err := syscall.Mmap(-1, 0, 4<<16, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Munmap(b) })
		if err := img.mapInto(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := mapping(), mapping()
	want := make([]byte, 4<<16)
	copy(want[10:], "hello")
	copy(want[70000:], "world")
	if !bytes.Equal(a, want) {
		t.Fatal("a mapping does not hold the image (zeros around it)")
	}
	copy(a[10:], "HELLO")
	a[200000] = 1 // past the image: anonymous memory
	if !bytes.Equal(b, want) {
		t.Error("a write to one mapping shows in another")
	}
	c := make([]byte, 1<<17)
	if err := img.copyInto(c); err != nil || !bytes.Equal(c, want[:1<<17]) {
		t.Errorf("copyInto: %v, or the bytes differ", err)
	}
	// Without a memfd the image is copied, into a mapping or a slice.
	noFd := &memImage{fd: -1, size: img.size, img: &instrument.Image{Size: 70005, Chunks: []instrument.Chunk{{Off: 10, Bytes: []byte("hello")}, {Off: 70000, Bytes: []byte("world")}}}}
	d := make([]byte, 4<<16)
	if err := noFd.mapInto(d); err != nil || !bytes.Equal(d, want) {
		t.Errorf("mapInto without a memfd: %v, or the bytes differ", err)
	}
}

// TestSparesReset: a reservation kept for the next instance holds nothing
// of the last one: the image's pages read as the image again, the rest as
// zeros, whether it was reset alone, in a batch, or after waiting idle. No
// more than max are kept, and none after close.
func TestSparesReset(t *testing.T) {
	img := newMemImage(&instrument.Image{Size: 70005, Chunks: []instrument.Chunk{{Off: 10, Bytes: []byte("hello")}, {Off: 70000, Bytes: []byte("world")}}})
	defer img.close()
	if img.fd < 0 {
		t.Fatal("no memfd: the image is copied instead of mapped")
	}
	const size = 8 << 16
	reserve := func() []byte { return reserveWith(t, img, size) }
	want := make([]byte, size)
	copy(want[10:], "hello")
	copy(want[70000:], "world")
	dirty := func(b []byte) []byte {
		copy(b[10:], "HELLO")
		copy(b[70000:], "WORLD")
		copy(b[200000:], "secret") // past the image: anonymous memory
		return b
	}
	kept := func(s *spares) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.free) + len(s.dirty)
	}

	s := &spares{max: 2 * resetBatch}
	defer s.close()
	// Alone: given out again at once, reset first.
	b := dirty(reserve())
	s.put(b, 4<<16, img)
	got := s.get(size)
	if got == nil || &got[0] != &b[0] {
		t.Fatal("the reservation was not kept and given out again")
	}
	if !bytes.Equal(got, want) {
		t.Fatal("a kept reservation still holds the last instance's writes")
	}
	if s.get(size) != nil {
		t.Fatal("one reservation given out twice")
	}

	// A batch: reset by one process_madvise where the kernel takes it.
	batch := map[*byte]bool{}
	for range resetBatch {
		r := dirty(reserve())
		batch[&r[0]] = true
		s.put(r, size, img)
	}
	s.mu.Lock()
	free, pending, batched := len(s.free), len(s.dirty), s.pidfd >= 0 && !s.refused
	s.mu.Unlock()
	if free != resetBatch || pending != 0 {
		t.Fatalf("after a batch: %d reset, %d waiting; want %d and 0", free, pending, resetBatch)
	}
	if !batched {
		t.Log("process_madvise refused here: reset one madvise each")
	}
	for range resetBatch {
		r := s.get(size)
		if r == nil || !batch[&r[0]] {
			t.Fatal("a batch's reservation not given out")
		}
		if !bytes.Equal(r, want) {
			t.Fatal("a batch's reservation still holds its instance's writes")
		}
		defer syscall.Munmap(r)
	}

	// Idle: reset within resetIdle without another put or get.
	s.put(dirty(got), size, img)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		free, pending = len(s.free), len(s.dirty)
		s.mu.Unlock()
		if free == 1 && pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an idle reservation not reset: %d reset, %d waiting", free, pending)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got = s.get(size); got == nil || !bytes.Equal(got, want) {
		t.Fatal("an idle reservation, reset, still holds its instance's writes")
	}

	// Bounded: no more than max kept.
	for range 2*resetBatch + 3 {
		s.put(reserve(), size, img)
	}
	if n := kept(s); n != 2*resetBatch {
		t.Fatalf("%d reservations kept, want at most %d", n, 2*resetBatch)
	}
	// Without a memfd the image was copied in: dropping the pages would
	// lose it, so the reservation is not kept.
	s.get(size)
	noFd := &memImage{fd: -1, size: img.size, img: img.img}
	s.put(reserve(), size, noFd)
	if n := kept(s); n != 2*resetBatch-1 {
		t.Fatalf("%d kept after a copied image's reservation came back, want %d", n, 2*resetBatch-1)
	}
	s.close()
	s.put(got, size, img)
	if n := kept(s); n != 0 {
		t.Fatalf("%d reservations kept after close", n)
	}
}

// TestSparesKeepZeroed: the pages an instance touched past the image are
// zeroed and kept for the next instance (no page fault to take again),
// charged to the budgets while kept, and given back to the system and the
// budgets when the reservation waits unused, when the budgets need room
// (dropKept), or when they have no room for them.
func TestSparesKeepZeroed(t *testing.T) {
	img := newMemImage(&instrument.Image{Size: 5, Chunks: []instrument.Chunk{{Off: 0, Bytes: []byte("hello")}}})
	defer img.close()
	if img.fd < 0 {
		t.Fatal("no memfd: the image is copied instead of mapped")
	}
	const size, off = 8 << 16, 200000
	page := os.Getpagesize()
	reserve := func() []byte { return reserveWith(t, img, size) }
	resident := func(b []byte) bool {
		p := b[off/page*page:]
		vec := make([]byte, 1)
		if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&p[0])), uintptr(page), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatal(e)
		}
		return vec[0]&1 != 0
	}
	var charged atomic.Int64
	room := true
	s := &spares{max: 4,
		charge: func(n uint64) bool {
			if room {
				charged.Add(int64(n))
			}
			return room
		},
		uncharge: func(n uint64) { charged.Add(-int64(n)) },
	}
	defer s.close()
	want := make([]byte, size)
	copy(want, "hello")

	b := reserve()
	copy(b, "HELLO")
	copy(b[off:], "secret")
	s.put(b, size, img)
	if c := charged.Load(); c != int64(2*page) {
		t.Fatalf("%d bytes charged for the kept reservation, want %d (the image's page, copied back, and the one page it touched past it)", c, 2*page)
	}
	got := s.get(size)
	if got == nil || &got[0] != &b[0] {
		t.Fatal("the reservation was not kept and given out again")
	}
	// Before the bytes are read: a read maps the zero page, which mincore
	// counts too.
	if !resident(got) {
		t.Fatal("the touched page past the image was dropped, not kept zeroed")
	}
	if !bytes.Equal(got, want) {
		t.Fatal("a kept reservation still holds the last instance's writes")
	}
	if c := charged.Load(); c != 0 {
		t.Fatalf("%d bytes still charged after the reservation was given out", c)
	}

	// Unused: its page is dropped and uncharged within 2*resetIdle. (The
	// reservation is free again only once the drop is done: waited for
	// too, as the next step takes it.)
	copy(got[off:], "secret")
	s.put(got, size, img)
	free := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.free)
	}
	deadline := time.Now().Add(10 * time.Second)
	for charged.Load() != 0 || resident(got) || free() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("an unused reservation still holds its page (%d bytes charged)", charged.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The budgets need room: dropped at once.
	got = s.get(size)
	copy(got[off:], "secret")
	s.put(got, size, img)
	if n := s.dropKept(); n != uint64(2*page) || charged.Load() != 0 || resident(got) {
		t.Fatalf("dropKept gave back %d bytes, %d still charged, page kept %v", n, charged.Load(), resident(got))
	}
	if got = s.get(size); got == nil || !bytes.Equal(got, want) {
		t.Fatal("a reservation whose pages were dropped still holds its instance's writes")
	}

	// No room in the budgets: dropped, nothing charged.
	room = false
	copy(got[off:], "secret")
	s.put(got, size, img)
	if got = s.get(size); got == nil || resident(got) || !bytes.Equal(got, want) || charged.Load() != 0 {
		t.Fatal("a reservation the budgets had no room for was kept, or kept its writes")
	}
	syscall.Munmap(got)

	// Bounded: a Handler's reservations hold at most maxKept together.
	big := &spares{max: 4}
	const bigSize = maxResident
	for range 3 {
		b := reserveWith(t, img, bigSize)
		for p := page; p < bigSize; p += page {
			b[p] = 1
		}
		big.put(b, bigSize, img)
	}
	if k, want := big.kept.Load(), int64(2*bigSize); k != want {
		t.Errorf("%d bytes of zeroed pages kept, want %d (two reservations' within %d)", k, want, maxKept)
	}
	big.close()
	if k := big.kept.Load(); k != 0 {
		t.Errorf("%d bytes kept after close", k)
	}
}

// reserveWith maps a reservation of size bytes with img over its start.
func reserveWith(t *testing.T, img *memImage, size int) []byte {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.mapInto(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// pageKinds reads b's pagemap entries: per page, whether it is mapped and
// whether it is a private copy (anonymous) rather than the file's page.
func pageKinds(t *testing.T, pm *os.File, b []byte) (mapped, private []bool) {
	t.Helper()
	page := os.Getpagesize()
	n := len(b) / page
	raw := make([]byte, 8*n)
	if _, err := pm.ReadAt(raw, int64(uintptr(unsafe.Pointer(&b[0]))/uintptr(page))*8); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		e := binary.LittleEndian.Uint64(raw[8*i:])
		mapped = append(mapped, e&pmPresent != 0)
		private = append(private, e&pmPresent != 0 && e&pmFile == 0)
	}
	return mapped, private
}

// TestImageRestore: with pagemap, a closed instance's image is restored by
// copying the image back over the pages it wrote alone — found as private
// copies — which stay in memory; a page it only read still maps the image.
// The reservation is then free at once: nothing to drop. Without pagemap,
// restore declines and the pages are dropped.
func TestImageRestore(t *testing.T) {
	img := newMemImage(&instrument.Image{Size: 70005, Chunks: []instrument.Chunk{{Off: 10, Bytes: []byte("hello")}, {Off: 70000, Bytes: []byte("world")}}})
	defer img.close()
	if img.fd < 0 || img.view == nil {
		t.Fatal("no memfd, or no view of it: the image cannot be restored")
	}
	const size = 8 << 16
	page := os.Getpagesize()
	want := make([]byte, size)
	copy(want[10:], "hello")
	copy(want[70000:], "world")
	b := reserveWith(t, img, size)
	if img.restore(b[:img.size]) != -1 {
		t.Fatal("restore without pagemap did not decline")
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	img.pagemap = pm

	for round := range 2 { // a restored page is written and restored again
		copy(b[10:], "HELLO")
		copy(b[70000:], "WORLD")
		if b[5*page+1] != 0 { // read only
			t.Fatal("the image holds zeros there")
		}
		if n := img.restore(b[:img.size]); n != 2*page {
			t.Fatalf("round %d: restore copied %d bytes, want the 2 pages written (%d)", round, n, 2*page)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("round %d: the restored image differs from the module's", round)
		}
		mapped, private := pageKinds(t, pm, b[:img.size])
		if !private[0] || !private[17] || !mapped[5] || private[5] {
			t.Fatalf("round %d: pages 0, 17 (written) private %v %v; 5 (read) mapped %v, private %v",
				round, private[0], private[17], mapped[5], private[5])
		}
	}

	s := &spares{max: 4}
	defer s.close()
	copy(b[10:], "HELLO")
	copy(b[200000:], "secret") // past the image
	s.put(b, size, img)
	s.mu.Lock()
	free, dirty := len(s.free), len(s.dirty)
	s.mu.Unlock()
	if free != 1 || dirty != 0 {
		t.Fatalf("after put: %d free, %d waiting for their pages to be dropped; want 1 and 0", free, dirty)
	}
	if got := s.get(size); got == nil || &got[0] != &b[0] || !bytes.Equal(got, want) {
		t.Fatal("the restored reservation was not given out as the image and zeros")
	}
}
