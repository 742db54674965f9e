package host

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

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
