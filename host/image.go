package host

import (
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wcluster/wcluster/internal/instrument"
)

// memImage is a module's initial memory — what its data segments write
// (instrument.SplitData) — held once per module in a sealed memfd. Every
// instance maps it copy-on-write at the start of its memory: instantiation
// copies nothing, a page the guest only reads stays shared by all the
// instances, and a page it writes is copied for that instance alone (the
// kernel's private mapping). A Go-built guest's data is about a megabyte in
// tens of thousands of segments; copying it into fresh pages was most of
// the cost of starting an instance, paid by a WASI command on every
// connection.
//
// Sealed, the file can no longer be written, grown or shrunk by anyone:
// the instances of one module, whichever tenant they serve, see the same
// bytes at start and never each other's.
type memImage struct {
	fd   int // the sealed memfd, or -1 where one could not be made
	size int // the mapping's length: the image rounded up to a page
	// img is kept where there is no memfd: each memory then gets a copy.
	img *instrument.Image
	// view maps the memfd read-only and shared (the page cache's pages,
	// no copy): restore copies the image back from it over a kept
	// reservation rather than have its pages dropped and faulted in again
	// (spares). nil: they are dropped.
	view []byte
	// pagemap is /proc/self/pagemap (Modules.pagemap), nil where it did
	// not open: restore reads there which pages an instance wrote.
	pagemap *os.File
}

// smallImage bounds the images restore copies back whole: a larger one
// gets only the pages an instance wrote copied back.
const smallImage = 64 << 10

// newMemImage holds img for mapping; without memfd (an old kernel, a
// sandbox that refuses it) it keeps img for copying.
func newMemImage(img *instrument.Image) *memImage {
	page := os.Getpagesize()
	m := &memImage{fd: -1, size: (int(img.Size) + page - 1) &^ (page - 1), img: img}
	fd, err := sealedImage(img, m.size)
	if err == nil {
		m.fd, m.img = fd, nil
		if v, err := unix.Mmap(fd, 0, m.size, unix.PROT_READ, unix.MAP_SHARED); err == nil {
			m.view = v
		}
	}
	return m
}

func sealedImage(img *instrument.Image, size int) (int, error) {
	fd, err := unix.MemfdCreate("wcluster-memory-image", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	err = unix.Ftruncate(fd, int64(size))
	for _, c := range img.Chunks {
		for b, off := c.Bytes, int64(c.Off); err == nil && len(b) > 0; {
			var n int
			if n, err = unix.Pwrite(fd, b, off); err == nil {
				b, off = b[n:], off+int64(n)
			}
		}
	}
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("memory image: %w", err)
	}
	return fd, nil
}

// mapInto maps the image copy-on-write over the start of b, a mapping of
// its own at least size long.
func (m *memImage) mapInto(b []byte) error {
	if len(b) < m.size {
		return fmt.Errorf("memory image: %d bytes do not fit a memory of %d", m.size, len(b))
	}
	if m.fd < 0 {
		return m.copyInto(b)
	}
	_, err := unix.MmapPtr(m.fd, 0, unsafe.Pointer(&b[0]), uintptr(m.size),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("memory image: mmap: %w", err)
	}
	return nil
}

// copyInto writes the image into b, which holds zeros and is at least
// img.Size long.
func (m *memImage) copyInto(b []byte) error {
	if m.fd < 0 {
		for _, c := range m.img.Chunks {
			copy(b[c.Off:], c.Bytes)
		}
		return nil
	}
	p := b[:min(len(b), m.size)]
	for off := 0; off < len(p); {
		n, err := unix.Pread(m.fd, p[off:], int64(off))
		switch {
		case err != nil:
			return fmt.Errorf("memory image: read: %w", err)
		case n == 0:
			return fmt.Errorf("memory image: read: %w", io.ErrUnexpectedEOF)
		}
		off += n
	}
	return nil
}

// Bits of a /proc/self/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // a file page (or shared anonymous): not a private copy
)

// restore puts the image back over b, a reservation's first m.size bytes
// with the image mapped there copy-on-write, after an instance used it. An
// image of at most smallImage is copied back whole. Over a larger one, the
// pages the instance wrote — private copies, per pagemap — get the image's
// bytes copied over them; pages it only read still map the image, and
// pages it never touched are still unmapped. The pages copied over stay in
// memory. It returns their bytes, or -1 where it cannot restore b (no view,
// or pagemap cannot tell), b untouched: its pages must then be dropped.
func (m *memImage) restore(b []byte) int {
	page := os.Getpagesize()
	if m.view == nil || len(b) != m.size || len(b)%page != 0 {
		return -1
	}
	if m.size <= smallImage {
		copy(b, m.view)
		return m.size
	}
	if m.pagemap == nil {
		return -1
	}
	n := len(b) / page
	ents := make([]uint64, n)
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&ents[0])), n*8)
	off := int64(uintptr(unsafe.Pointer(&b[0]))/uintptr(page)) * 8
	if k, err := m.pagemap.ReadAt(raw, off); k != len(raw) || err != nil {
		return -1
	}
	copied := 0
	for i, e := range ents {
		// A swapped-out page was anonymous, so written: copied too (the
		// copy swaps it in), never left to come back with the guest's bytes.
		if e&pmSwapped != 0 || e&pmPresent != 0 && e&pmFile == 0 {
			copy(b[i*page:(i+1)*page], m.view[i*page:(i+1)*page])
			copied += page
		}
	}
	return copied
}

func (m *memImage) close() {
	if m == nil {
		return
	}
	if m.view != nil {
		unix.Munmap(m.view)
		m.view = nil
	}
	if m.fd >= 0 {
		unix.Close(m.fd)
		m.fd = -1
	}
}
