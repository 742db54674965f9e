package dispatch

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetDeferAccept: a listener set to defer has TCP_DEFER_ACCEPT at
// deferAcceptSecs, and set back has none (a reload can turn it off on a
// socket it keeps).
func TestSetDeferAccept(t *testing.T) {
	l, err := listenTCP("127.0.0.1:0", 16, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	get := func() int {
		t.Helper()
		var v int
		var gerr error
		if err := l.rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return v
	}
	if v := get(); v != 0 {
		t.Fatalf("a new listener defers %ds, want 0", v)
	}
	for _, on := range []bool{true, false} {
		if err := l.setDeferAccept(on); err != nil {
			t.Fatal(err)
		}
		want := 0
		if on {
			want = deferAcceptSecs
		}
		if v := get(); v != want {
			t.Fatalf("setDeferAccept(%v): TCP_DEFER_ACCEPT %d, want %d", on, v, want)
		}
	}
}
