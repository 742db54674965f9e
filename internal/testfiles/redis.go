package testfiles

import (
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"
)

// Redis runs a real redis-server on a free loopback port for the test (no
// persistence, killed at the end) and returns its URL and the process. A
// machine without redis-server fails the test: scripts/deps.sh installs it.
func Redis(t testing.TB) (string, *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is missing (scripts/deps.sh installs it): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return fmt.Sprintf("redis://127.0.0.1:%d/0", port), cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server not listening after 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval for the port to open
	}
}
