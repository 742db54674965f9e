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
	// small is the image's bytes (size long) where it is at most
	// smallImage: a kept reservation gets them copied back rather than its
	// pages dropped and faulted in again (spares).
	small []byte
}

// smallImage bounds the images a kept reservation is restored by copying.
const smallImage = 64 << 10

// newMemImage holds img for mapping; without memfd (an old kernel, a
// sandbox that refuses it) it keeps img for copying.
func newMemImage(img *instrument.Image) *memImage {
	page := os.Getpagesize()
	m := &memImage{fd: -1, size: (int(img.Size) + page - 1) &^ (page - 1), img: img}
	fd, err := sealedImage(img, m.size)
	if err == nil {
		m.fd, m.img = fd, nil
		if m.size <= smallImage {
			m.small = make([]byte, m.size)
			writeChunks(m.small, img)
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
		writeChunks(b, m.img)
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

// writeChunks writes img's bytes into b, which holds zeros.
func writeChunks(b []byte, img *instrument.Image) {
	for _, c := range img.Chunks {
		copy(b[c.Off:], c.Bytes)
	}
}

func (m *memImage) close() {
	if m != nil && m.fd >= 0 {
		unix.Close(m.fd)
		m.fd = -1
	}
}
