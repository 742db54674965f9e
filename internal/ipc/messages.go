// Package ipc is the framing of the channel between the master and a
// worker: a SOCK_SEQPACKET socket pair whose every send is one message,
// delivered whole and in order, with the fd it passes (SCM_RIGHTS) if any.
// It owns the message types and their encoding; what each message means
// to the master and to a worker is the dispatch package's.
package ipc

import "encoding/binary"

// Version is the protocol on the channel: the message types and their
// layout below. The master tells a worker its version (in the worker's
// boot configuration) and a worker of another version refuses to start:
// that is a worker from another binary, replaced on disk while an older
// master runs.
const Version = 5

// Message types on a worker's channel; the first byte of every message.
const (
	// MsgNewConn (master→worker) hands over connections: seq u64 and
	// listener u8 for each, at most MaxNewConns, with their fds in the
	// same order in one SCM_RIGHTS.
	MsgNewConn byte = 1
	// 2 is unused (a single ack once; MsgAcks answers every newconn).
	MsgDone      byte = 3 // worker→master: count u32 connections finished
	MsgReady     byte = 4 // worker→master: serving
	MsgHeartbeat byte = 5 // worker→master: JSON workerReport
	MsgFatal     byte = 6 // worker→master: the reason it cannot serve, text
	// MsgAcks answers several newconns at once and carries the connections
	// finished since the last report: done u32, then seq u64 and answer
	// u8 per newconn. MsgDone carries the connections finished between
	// batches.
	MsgAcks byte = 7
	// MsgSecrets (master→worker) carries the program's secrets (opaque
	// bytes, such as TLS session ticket keys), replacing the last ones.
	MsgSecrets byte = 8
	// MsgRecycle (worker→master): served u64, then one of Recycle*: the
	// worker's progress towards its request limit.
	MsgRecycle byte = 9
	// MsgChallenges (master→worker): gen u64, then the live ACME
	// challenges (opaque bytes: what the host answers for the CA),
	// replacing the last ones. The worker answers MsgChallengesSeen.
	MsgChallenges byte = 10
	// MsgChallengesSeen (worker→master): gen u64 of the challenges it
	// now answers.
	MsgChallengesSeen byte = 11
	// MsgProcs (master→worker): procs u32, the GOMAXPROCS the worker is to
	// run with from now on (its share of the CPUs changed with the number
	// of workers).
	MsgProcs byte = 12
)

// What a MsgRecycle says.
const (
	// RecycleNear: half of the limit served; the master starts the
	// replacement, so it is ready when the limit comes.
	RecycleNear byte = 0
	// RecycleNow: the limit is reached: replace it now.
	RecycleNow byte = 1
	// RecycleFinal: drained and about to exit, with the final count.
	RecycleFinal byte = 2
)

// MaxAcks is the number of answers after which a worker sends its MsgAcks
// rather than take another message (which may add up to MaxNewConns).
const MaxAcks = 64

// A worker's answer to one newconn (the byte after its seq). A worker takes
// every connection whose fd arrives; the only other answer is starved.
const (
	AckAccepted byte = 1 // taken: the master closes its copy
	// AckStarved: its fd did not arrive (the worker is out of
	// descriptors); the master gives it to another worker, or holds it,
	// and sends this one nothing more until it has room again.
	AckStarved byte = 2
)

// MaxNewConns bounds the connections one MsgNewConn hands over.
const MaxNewConns = 16

// NewConnSize is the length of one connection's record in a MsgNewConn.
const NewConnSize = 9

// AppendNewConn appends connection seq from listener lis to a MsgNewConn
// message; b starts as []byte{MsgNewConn}.
func AppendNewConn(b []byte, seq uint64, lis int) []byte {
	b = binary.LittleEndian.AppendUint64(b, seq)
	return append(b, byte(lis))
}

// AppendAck appends one newconn's answer to a MsgAcks message.
func AppendAck(b []byte, seq uint64, answer byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, seq)
	return append(b, answer)
}
