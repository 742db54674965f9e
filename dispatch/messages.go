package dispatch

// The master's side of a worker's channel: the messages it handles.

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/wcluster/wcluster/internal/ipc"
	"golang.org/x/sys/unix"
)

// finished counts n connections of p as ended: room for more.
func (m *Group) finished(p *proc, n int64) {
	m.mu.Lock()
	p.inFlight -= n
	if p.inFlight < 0 {
		p.inFlight = 0
	}
	m.uncapLocked(p)
	m.mu.Unlock()
	m.signalCapacity()
}

// readWorker handles one worker's messages until its channel closes.
func (m *Group) readWorker(p *proc) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		msg, fds, err := p.ch.Recv(buf, oob)
		ipc.CloseAll(fds) // workers send no fds
		if err != nil && !errors.Is(err, ipc.ErrTruncated) {
			return
		}
		// ipc.ErrTruncated: fds the master does not want were lost; the
		// message is whole.
		switch msg[0] {
		case ipc.MsgReady:
			m.mu.Lock()
			first := p.state == stateStarting
			if first {
				p.state = stateReady
			}
			m.mu.Unlock()
			if first {
				close(p.ready)
			}
			m.emit(procEvent{evReady, p})
			m.signalCapacity()
		case ipc.MsgAcks:
			if len(msg) < 5 {
				continue
			}
			// Connections finished first: they may be what gives a
			// starved worker room again.
			if n := binary.LittleEndian.Uint32(msg[1:5]); n > 0 {
				m.finished(p, int64(n))
			}
			for rec := msg[5:]; len(rec) >= 9; rec = rec[9:] {
				m.ack(p, binary.LittleEndian.Uint64(rec), rec[8])
			}
			// A worker that was stalled takes connections again.
			m.signalCapacity()
		case ipc.MsgDone:
			if len(msg) < 5 {
				continue
			}
			m.finished(p, int64(binary.LittleEndian.Uint32(msg[1:5])))
		case ipc.MsgHeartbeat:
			var r workerReport
			if json.Unmarshal(msg[1:], &r) != nil {
				continue
			}
			m.mu.Lock()
			p.lastBeat = time.Now()
			r.Handler = r.Handler.Merge(p.report.Handler)
			p.report = r
			// A worker that ran out of descriptors is offered one more
			// connection at each beat, in case what held them was not
			// connections (see ack: each one it takes raises its cap).
			// A soft cap (a full channel) ends: it beats, so it reads.
			lifted := p.capped
			switch {
			case p.capped && p.capSoft:
				p.capped = false
			case p.capped && p.inFlight >= p.fdCap:
				p.fdCap = p.inFlight + 1
			default:
				lifted = false
			}
			cause := m.claimRecycleLocked(p)
			m.mu.Unlock()
			if cause != "" {
				m.goRecycle(p, cause, nil)
			}
			if lifted {
				m.signalCapacity()
			}
		case ipc.MsgRecycle:
			if len(msg) < 10 {
				continue
			}
			m.recycleMsg(p, binary.LittleEndian.Uint64(msg[1:9]), msg[9])
		case ipc.MsgChallengesSeen:
			if len(msg) >= 9 {
				m.challengesSeen(p, binary.LittleEndian.Uint64(msg[1:9]))
			}
		case ipc.MsgFatal:
			m.mu.Lock()
			p.fatal = string(msg[1:])
			m.mu.Unlock()
		}
	}
}
