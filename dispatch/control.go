package dispatch

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The control socket: a unix stream socket the master owns. A client sends
// one command line and reads one JSON reply, then the master closes.
//
//	status            → ClusterStatus
//	reload            → {"ok":true} once every group reloaded, or {"error":...}
//	scale N [GROUP]   → {"ok":true,"workers":N}
//	stop [now]        → {"ok":true}; the master then stops (draining, or not)
//
// Serving it lives with the master because it reports and changes the
// master's state.

// ControlReply is the reply to a command other than status.
type ControlReply struct {
	OK      bool   `json:"ok,omitempty"`
	Error   string `json:"error,omitempty"`
	Workers int    `json:"workers,omitempty"`
}

// ServeControl listens on path until ctx ends or Run returns. reload is what
// the reload command runs (the program re-reads its config). A stale socket
// file left by a dead master is replaced; a live one is an error. The
// returned wait blocks until the socket is closed.
//
// The socket is created mode 0600 whatever the umask, and only a client of
// the master's own uid, or root, is served (SO_PEERCRED): the others get an
// error reply and a warning in the log.
func (c *Cluster) ServeControl(ctx context.Context, path string, reload func(context.Context) error) (wait func(), err error) {
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s is in use by a running master: stop it or choose another --control", path)
	}
	// Only a socket is stale; anything else at path is the operator's.
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way: remove it or choose another --control", path)
		}
		os.Remove(path)
	}
	l, err := listenControl(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		l.Close()
		os.Remove(path)
	}()
	go func() {
		defer wg.Done()
		pause := acceptPause{log: c.log, addr: path}
		for {
			conn, err := l.AcceptUnix()
			if err != nil {
				// Out of descriptors under a flood, say: wait, do not
				// give up on the socket.
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) || !pause.failed(ctx, err) {
					return
				}
				continue
			}
			pause.ok()
			// One command at a time: a reload holds the socket until done.
			c.control(ctx, conn, reload)
		}
	}()
	return wg.Wait, nil
}

// listenControl creates the control socket at path, mode 0600 from the
// start: the socket's own mode is set before bind, which gives it to the
// file (less the umask, which can only take away). There is no moment when
// the file is more open; it is checked before listen all the same.
func listenControl(path string) (*net.UnixListener, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "control")
	defer f.Close() // FileListener holds its own copy
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, os.NewSyscallError("fchmod", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		os.Remove(path)
		return nil, fmt.Errorf("%s: mode %v after bind, want a socket of mode 0600", path, st.Mode())
	}
	if err := unix.Listen(fd, 16); err != nil {
		os.Remove(path)
		return nil, os.NewSyscallError("listen", err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	ul := l.(*net.UnixListener)
	// Closing the listener removes nothing: ServeControl removes the file.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// peerAllowed checks a control client's credentials: the master's uid, or
// root. It returns the peer's uid and pid for the log.
func peerAllowed(conn *net.UnixConn) (ok bool, uid uint32, pid int32, err error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return false, 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return false, 0, 0, err
	}
	if cerr != nil {
		return false, 0, 0, os.NewSyscallError("getsockopt SO_PEERCRED", cerr)
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Geteuid(), cred.Uid, cred.Pid, nil
}

func (c *Cluster) control(ctx context.Context, conn *net.UnixConn, reload func(context.Context) error) {
	defer conn.Close()
	allowed, uid, pid, cerr := peerAllowed(conn)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	conn.SetReadDeadline(time.Time{})
	fields := strings.Fields(line)
	var reply any
	fail := func(err error) { reply = ControlReply{Error: err.Error()} }
	switch {
	case cerr != nil:
		c.log.Warn("control: cannot tell who the client is; refused", "err", cerr)
		fail(errors.New("permission denied: the master could not check who you are"))
	case !allowed:
		c.log.Warn("control: refused a client of another user", "uid", uid, "pid", pid, "command", strings.TrimSpace(line))
		who := "root"
		if os.Geteuid() != 0 {
			who = fmt.Sprintf("uid %d and root", os.Geteuid())
		}
		fail(fmt.Errorf("permission denied: uid %d may not control this master (only %s may)", uid, who))
	case len(fields) == 0:
		fail(errors.New("empty command"))
	case fields[0] == "status":
		reply = c.Status()
	case fields[0] == "reload":
		if reload == nil {
			fail(errors.New("reload is not available"))
		} else if err := reload(ctx); err != nil {
			fail(fmt.Errorf("reload failed; the old workers keep serving: %w", err))
		} else {
			reply = ControlReply{OK: true}
		}
	case fields[0] == "scale" && (len(fields) == 2 || len(fields) == 3):
		n, err := strconv.Atoi(fields[1])
		group := ""
		if len(fields) == 3 {
			group = fields[2]
		}
		var m *Group
		if err == nil {
			m, err = c.Group(group)
		}
		if err == nil {
			err = c.Scale(ctx, m, n)
		}
		if err != nil {
			fail(err)
		} else {
			reply = ControlReply{OK: true, Workers: n}
		}
	case fields[0] == "stop" && (len(fields) == 1 || (len(fields) == 2 && fields[1] == "now")):
		reply = ControlReply{OK: true}
		defer c.Stop(len(fields) == 2)
	default:
		fail(fmt.Errorf("unknown command %q: use status, reload, scale N [GROUP] or stop [now]", strings.TrimSpace(line)))
	}
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	json.NewEncoder(conn).Encode(reply)
}

// Control sends one command to the master at path and returns its reply.
// A reply carrying an error is returned as that error.
func Control(path, cmd string) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no master at %s (is wcluster serve running with --control %s?)", path, path)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("control socket %s: permission denied: only the master's user (or root) may use it", path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer conn.Close()
	// A reload waits for new workers to be ready: allow for it.
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := conn.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	var b strings.Builder
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var r ControlReply
	if json.Unmarshal([]byte(b.String()), &r) == nil && r.Error != "" {
		return nil, errors.New(r.Error)
	}
	return []byte(b.String()), nil
}
