// Package dispatch owns the master process and the dispatch half of each
// worker: the listening socket, the policies that hand connections to
// workers, worker lifecycle and supervision, and what the messages between
// them mean (their framing is internal/ipc's).
//
// The master binds the listener once and keeps it for its whole life. It
// starts N workers by re-executing its own binary with WCLUSTER_WORKER_ID set
// (as Node's cluster uses NODE_UNIQUE_ID), each with a SOCK_SEQPACKET socket
// pair as its channel (fd 3), its configuration in a sealed memfd (fd 4), a
// memfd for its crash report (fd 5) and a clean environment (see spawn.go).
//
// Policies:
//   - rr: the master accepts (raw accept4, what the backlog holds up to
//     ipc.MaxNewConns) and sends each connection's fd to the least-loaded
//     ready worker, round-robin among equals, those for one worker in one
//     newconn message; the worker answers accepted, or starved (its copy of
//     the fd did not arrive: it is out of descriptors). The master keeps
//     its copy of the fd until the answer, so a connection handed back, or
//     sent to a worker that dies before answering, goes to another worker;
//     a worker holding maxUnacked unanswered gets no more. The master never
//     waits on a channel: one that is full (a hung worker) or short of
//     buffers caps that worker at what it holds. Answers go in batches
//     (ipc.MsgAcks: the newconns waiting on the channel, and the
//     connections finished since the last report). When every worker is at
//     MaxConns the master stops accepting and the kernel backlog holds the
//     surplus.
//   - shared: workers inherit the listening socket (fd 6) and accept
//     themselves; a worker about to accept while it holds clearly more
//     connections than the least loaded one leaves the connection to the
//     others for a moment (a table of counts in a memfd every worker maps,
//     load.go); each stops accepting above 7/8 of MaxConns.
//   - reuseport: each worker binds its own SO_REUSEPORT socket and the kernel
//     balances by hash.
//
// A worker whose channel reaches end of stream (the master shut down its
// side, or died) stops taking connections, lets its connections finish, and
// exits. The worker side never imports the host: it hands each connection to
// a Handler that the program wires in.
package dispatch
