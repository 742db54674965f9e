package dispatch

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// sd_notify(3): a service manager that wants to hear how start-up, reloads
// and stops go (systemd's Type=notify) names a unix datagram socket in
// NOTIFY_SOCKET; the service sends it newline-separated KEY=VALUE lines.

// EnvNotifySocket names the service manager's notification socket.
const EnvNotifySocket = "NOTIFY_SOCKET"

// States the master sends; see StateReloading for a reload's start.
const (
	// StateReady: start-up finished (every worker ready), or a reload did.
	StateReady = "READY=1"
	// StateStopping: a graceful stop began.
	StateStopping = "STOPPING=1"
)

// StateReloading is the message that starts a reload: RELOADING=1 with the
// CLOCK_MONOTONIC time systemd ≥ 253 wants for Type=notify-reload (older
// versions ignore it). Send StateReady when the reload is over, whether or
// not it succeeded.
func StateReloading() string {
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10)
}

// StateStatus is a free-form status line systemctl status shows.
func StateStatus(s string) string { return "STATUS=" + s }

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}

// notifyTimeout bounds one send: a service manager that does not read its
// socket must not stall the master.
const notifyTimeout = 2 * time.Second

// Notify sends state (one or more KEY=VALUE lines joined by "\n") to the
// service manager at $NOTIFY_SOCKET: a filesystem path, or an abstract
// socket when it starts with '@'. Without NOTIFY_SOCKET it does nothing and
// returns nil. NOTIFY_SOCKET is left set: the master notifies more than
// once, and systemd only listens to the main process (NotifyAccess=main),
// so a worker that inherits it cannot confuse it.
func Notify(state string) error {
	path := os.Getenv(EnvNotifySocket)
	if path == "" {
		return nil
	}
	if path[0] != '/' && path[0] != '@' {
		return fmt.Errorf("sd_notify: %s=%q: only unix socket paths and @abstract names are supported", EnvNotifySocket, path)
	}
	// Go's net maps a leading '@' to the abstract namespace.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(notifyTimeout))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// notify tells the service manager state; a failure is logged, not fatal.
func (c *Cluster) notify(state string) {
	if err := Notify(state); err != nil {
		c.log.Warn("cannot notify the service manager", "state", state, "err", err)
	}
}
