;; cat: a plain WASI command handler. _start copies stdin (fd 0, the
;; connection) to stdout (fd 1, the connection) until end of stream and
;; returns (exit status 0); an I/O error exits with status 1. No wcluster import.
(module
  (import "wasi_snapshot_preview1" "fd_read"   (func $fd_read   (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"  (func $fd_write  (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; 0: read iovec {buf, len}; 8: nread; 16: write iovec; 24: nwritten;
  ;; the buffer is the second page, 65536..131071.
  (memory (export "memory") 2)

  (func (export "_start")
    (local $errno i32) (local $p i32) (local $n i32) (local $w i32)
    (loop $read
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (local.set $errno (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $read (i32.eq (local.get $errno) (i32.const 27))) ;; EINTR
      (if (local.get $errno) (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 8)))
      (if (i32.eqz (local.get $n)) (then (return))) ;; end of stream
      (local.set $p (i32.const 65536))
      (block $written
        (loop $write
          (br_if $written (i32.eqz (local.get $n)))
          (i32.store (i32.const 16) (local.get $p))
          (i32.store (i32.const 20) (local.get $n))
          (local.set $errno (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
          (br_if $write (i32.eq (local.get $errno) (i32.const 27)))
          (if (local.get $errno) (then (call $proc_exit (i32.const 1))))
          (local.set $w (i32.load (i32.const 24)))
          (local.set $p (i32.add (local.get $p) (local.get $w)))
          (local.set $n (i32.sub (local.get $n) (local.get $w)))
          (br $write)))
      (br $read)))
)
