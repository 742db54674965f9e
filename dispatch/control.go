package dispatch

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// The control socket: a unix stream socket the master owns. A client sends
// one command line and reads one JSON reply, then the master closes.
//
//	status   → Status
//
// Serving it lives with the master because it reports the master's state.

// ServeControl listens on path until ctx ends. A stale socket file left by a
// dead master is replaced; a live one is an error.
func (m *Master) ServeControl(ctx context.Context, path string) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("dispatch: control socket %s is in use by a running master", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("dispatch: control socket: %w", err)
	}
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		select {
		case <-ctx.Done():
		case <-m.quit:
		}
		l.Close()
		os.Remove(path)
	}()
	go func() {
		defer m.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			m.control(c)
		}
	}()
	return nil
}

func (m *Master) control(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	var reply any
	switch cmd := strings.TrimSpace(line); cmd {
	case "status":
		reply = m.Status()
	default:
		reply = map[string]string{"error": fmt.Sprintf("unknown command %q", cmd)}
	}
	json.NewEncoder(c).Encode(reply)
}

// Control sends one command to the master at path and returns its reply.
func Control(path, cmd string) ([]byte, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no master at %s (is wcluster serve running with --control %s?)", path, path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	return []byte(b.String()), sc.Err()
}
