;; echo: wcluster ABI v1 raw echo handler. Every byte read is written back
;; until conn_read returns 0 (the peer half-closed) or an error; then the
;; handler half-closes its side and returns CLOSE.
(module
  (import "wcluster" "conn_read"        (func $conn_read        (param i32 i32) (result i32)))
  (import "wcluster" "conn_write"       (func $conn_write       (param i32 i32) (result i32)))
  (import "wcluster" "conn_close_write" (func $conn_close_write (result i32)))

  (memory (export "memory") 1) ;; the buffer is the whole page, 0..65535

  (func (export "wcluster_abi_v1"))

  (func (export "wcluster_handle") (param $flags i32) (result i32)
    (local $n i32)
    (block $eof
      (loop $next
        (local.set $n (call $conn_read (i32.const 0) (i32.const 65536)))
        (br_if $eof (i32.le_s (local.get $n) (i32.const 0)))
        (if (i32.lt_s (call $conn_write (i32.const 0) (local.get $n)) (i32.const 0))
          (then (return (i32.const 0)))) ;; CLOSE
        (br $next)))
    (drop (call $conn_close_write))
    (i32.const 0)) ;; CLOSE
)
