;; hello: wcluster ABI v1 HTTP/1.1 handler in WebAssembly text. Same behaviour
;; as guests/go/hello: every request is answered 200 "hello world\n" with
;; Content-Type text/plain, Content-Length 12 and X-Wcluster-Worker: <worker>.
;;  - keep-alive: HTTP/1.1 keeps by default, HTTP/1.0 only with
;;    "Connection: keep-alive"; "Connection: close" closes (tokens of a
;;    comma-separated Connection list are honoured);
;;  - pipelining: every complete request in what was read is answered with one
;;    conn_write; an incomplete tail (or a request not yet whole) is pushed
;;    back with conn_unread, then KEEP: one read per call;
;;  - Content-Length bodies are skipped; Transfer-Encoding and garbage get 400;
;;  - FLAG_DRAINING (2): the answer carries "Connection: close", result CLOSE.
;; No state survives a call except scratch buffers (the next call of the
;; connection may run on another instance).
(module
  (import "wcluster" "conn_read"   (func $conn_read   (param i32 i32) (result i32)))
  (import "wcluster" "conn_write"  (func $conn_write  (param i32 i32) (result i32)))
  (import "wcluster" "conn_unread" (func $conn_unread (param i32 i32) (result i32)))
  (import "wcluster" "worker_id"   (func $worker_id   (result i32)))

  ;; Layout: 0..1023 constant text and a digit scratch area (1008..1023),
  ;; IN at 4096 (32 KiB, the header limit), OUT at 40960 (64 KiB).
  (memory (export "memory") 2)
  (global $IN      i32 (i32.const 4096))
  (global $IN_CAP  i32 (i32.const 32768))
  (global $OUT     i32 (i32.const 40960))
  (global $OUT_CAP i32 (i32.const 65536))

  ;; Per-call scratch, reset at the start of every call.
  (global $outlen   (mut i32) (i32.const 0))
  (global $worker   (mut i32) (i32.const 0))
  (global $req_size (mut i32) (i32.const 0))
  (global $req_keep (mut i32) (i32.const 0))

  (data (i32.const 0)   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Wcluster-Worker: ") ;; 82
  (data (i32.const 96)  "\r\nConnection: close")  ;; 19
  (data (i32.const 128) "\r\n\r\nhello world\n")    ;; 16
  (data (i32.const 160) "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") ;; 66
  (data (i32.const 240) "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") ;; 86
  (data (i32.const 336) "content-length")       ;; 14
  (data (i32.const 352) "transfer-encoding")    ;; 17
  (data (i32.const 384) "connection")           ;; 10
  (data (i32.const 400) "close")                ;; 5
  (data (i32.const 416) "keep-alive")           ;; 10
  (data (i32.const 432) "HTTP/1.")              ;; 7

  (func (export "wcluster_abi_v1"))

  ;; copy n bytes from s to d (no overlap)
  (func $copy (param $d i32) (param $s i32) (param $n i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $d) (i32.load8_u (local.get $s)))
        (local.set $d (i32.add (local.get $d) (i32.const 1)))
        (local.set $s (i32.add (local.get $s) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l))))

  ;; 1 if the n bytes at a and b are equal
  (func $memeq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b)))
          (then (return (i32.const 0))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (i32.const 1))

  (func $lower (param $c i32) (result i32)
    (if (result i32) (i32.lt_u (i32.sub (local.get $c) (i32.const 65)) (i32.const 26))
      (then (i32.or (local.get $c) (i32.const 32)))
      (else (local.get $c))))

  ;; 1 if the n bytes at p equal, ignoring ASCII case, the lower-case lit of length litn
  (func $ieq (param $p i32) (param $n i32) (param $lit i32) (param $litn i32) (result i32)
    (if (i32.ne (local.get $n) (local.get $litn)) (then (return (i32.const 0))))
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.ne (call $lower (i32.load8_u (local.get $p))) (i32.load8_u (local.get $lit)))
          (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $lit (i32.add (local.get $lit) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (i32.const 1))

  ;; space, \t, \n, \v, \f, \r
  (func $is_space (param $c i32) (result i32)
    (i32.or (i32.eq (local.get $c) (i32.const 32))
            (i32.lt_u (i32.sub (local.get $c) (i32.const 9)) (i32.const 5))))

  ;; address of the first "\r\n" in [p, end), or 0
  (func $find_crlf (param $p i32) (param $end i32) (result i32)
    (block $none
      (loop $l
        (br_if $none (i32.ge_u (i32.add (local.get $p) (i32.const 1)) (local.get $end)))
        (if (i32.eq (i32.load16_u align=1 (local.get $p)) (i32.const 0x0a0d))
          (then (return (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $l)))
    (i32.const 0))

  ;; address of the first "\r\n\r\n" in [p, end), or 0
  (func $find_crlf2 (param $p i32) (param $end i32) (result i32)
    (block $none
      (loop $l
        (br_if $none (i32.ge_u (i32.add (local.get $p) (i32.const 3)) (local.get $end)))
        (if (i32.eq (i32.load align=1 (local.get $p)) (i32.const 0x0a0d0a0d))
          (then (return (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $l)))
    (i32.const 0))

  ;; Applies the comma-separated tokens of a Connection value [v, ve) to keep.
  (func $connection (param $v i32) (param $ve i32) (param $keep i32) (result i32)
    (local $t i32) (local $te i32)
    (block $done
      (loop $tok
        (br_if $done (i32.ge_u (local.get $v) (local.get $ve)))
        (local.set $t (local.get $v))
        (block $eot
          (loop $scan
            (br_if $eot (i32.ge_u (local.get $v) (local.get $ve)))
            (br_if $eot (i32.eq (i32.load8_u (local.get $v)) (i32.const 44)))
            (local.set $v (i32.add (local.get $v) (i32.const 1)))
            (br $scan)))
        (local.set $te (local.get $v))
        (block $b (loop $l
          (br_if $b (i32.ge_u (local.get $t) (local.get $te)))
          (br_if $b (i32.eqz (call $is_space (i32.load8_u (local.get $t)))))
          (local.set $t (i32.add (local.get $t) (i32.const 1)))
          (br $l)))
        (block $b (loop $l
          (br_if $b (i32.le_u (local.get $te) (local.get $t)))
          (br_if $b (i32.eqz (call $is_space (i32.load8_u (i32.sub (local.get $te) (i32.const 1))))))
          (local.set $te (i32.sub (local.get $te) (i32.const 1)))
          (br $l)))
        (if (call $ieq (local.get $t) (i32.sub (local.get $te) (local.get $t)) (i32.const 400) (i32.const 5))
          (then (local.set $keep (i32.const 0)))
          (else
            (if (call $ieq (local.get $t) (i32.sub (local.get $te) (local.get $t)) (i32.const 416) (i32.const 10))
              (then (local.set $keep (i32.const 1))))))
        (local.set $v (i32.add (local.get $v) (i32.const 1)))
        (br $tok)))
    (local.get $keep))

  ;; Finds one complete request in the n bytes at p. Returns 0 while more bytes
  ;; are needed, 1 for a request (sets $req_size and $req_keep), 2 for one
  ;; this handler cannot serve.
  (func $parse (param $p i32) (param $n i32) (result i32)
    (local $end i32) (local $le i32) (local $sp i32) (local $q i32)
    (local $h i32) (local $he i32) (local $colon i32) (local $v i32) (local $ve i32)
    (local $nl i32) (local $body i32) (local $keep i32) (local $c i32) (local $size i32)
    (local.set $end (call $find_crlf2 (local.get $p) (i32.add (local.get $p) (local.get $n))))
    (if (i32.eqz (local.get $end)) (then (return (i32.const 0))))
    ;; request line [p, le): "METHOD TARGET HTTP/1.x"
    (local.set $le (call $find_crlf (local.get $p) (i32.add (local.get $end) (i32.const 2))))
    (local.set $q (local.get $p))
    (block $b (loop $l
      (br_if $b (i32.ge_u (local.get $q) (local.get $le)))
      (if (i32.eq (i32.load8_u (local.get $q)) (i32.const 32)) (then (local.set $sp (local.get $q))))
      (local.set $q (i32.add (local.get $q) (i32.const 1)))
      (br $l)))
    (if (i32.eqz (local.get $sp)) (then (return (i32.const 2))))
    (if (i32.lt_u (i32.sub (i32.sub (local.get $le) (local.get $sp)) (i32.const 1)) (i32.const 7))
      (then (return (i32.const 2))))
    (if (i32.eqz (call $memeq (i32.add (local.get $sp) (i32.const 1)) (i32.const 432) (i32.const 7)))
      (then (return (i32.const 2))))
    (local.set $keep
      (i32.and (i32.eq (i32.sub (local.get $le) (local.get $sp)) (i32.const 9))
               (i32.eq (i32.load8_u offset=8 (local.get $sp)) (i32.const 49))))
    ;; header lines
    (local.set $h (i32.add (local.get $le) (i32.const 2)))
    (block $hdone
      (loop $hl
        (br_if $hdone (i32.ge_u (local.get $h) (local.get $end)))
        (local.set $he (call $find_crlf (local.get $h) (i32.add (local.get $end) (i32.const 2))))
        ;; colon
        (local.set $colon (i32.const 0))
        (local.set $q (local.get $h))
        (block $b (loop $l
          (br_if $b (i32.ge_u (local.get $q) (local.get $he)))
          (if (i32.eq (i32.load8_u (local.get $q)) (i32.const 58))
            (then (local.set $colon (local.get $q)) (br $b)))
          (local.set $q (i32.add (local.get $q) (i32.const 1)))
          (br $l)))
        (if (i32.eqz (local.get $colon)) (then (return (i32.const 2))))
        ;; trimmed value [v, ve)
        (local.set $v (i32.add (local.get $colon) (i32.const 1)))
        (local.set $ve (local.get $he))
        (block $b (loop $l
          (br_if $b (i32.ge_u (local.get $v) (local.get $ve)))
          (br_if $b (i32.eqz (call $is_space (i32.load8_u (local.get $v)))))
          (local.set $v (i32.add (local.get $v) (i32.const 1)))
          (br $l)))
        (block $b (loop $l
          (br_if $b (i32.le_u (local.get $ve) (local.get $v)))
          (br_if $b (i32.eqz (call $is_space (i32.load8_u (i32.sub (local.get $ve) (i32.const 1))))))
          (local.set $ve (i32.sub (local.get $ve) (i32.const 1)))
          (br $l)))
        (local.set $nl (i32.sub (local.get $colon) (local.get $h)))
        (if (call $ieq (local.get $h) (local.get $nl) (i32.const 336) (i32.const 14))
          (then
            ;; Content-Length: decimal digits only
            (if (i32.eq (local.get $v) (local.get $ve)) (then (return (i32.const 2))))
            (local.set $body (i32.const 0))
            (block $b (loop $l
              (br_if $b (i32.ge_u (local.get $v) (local.get $ve)))
              (local.set $c (i32.sub (i32.load8_u (local.get $v)) (i32.const 48)))
              (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const 2))))
              (if (i32.gt_u (local.get $body) (global.get $IN_CAP)) (then (return (i32.const 2))))
              (local.set $body (i32.add (i32.mul (local.get $body) (i32.const 10)) (local.get $c)))
              (local.set $v (i32.add (local.get $v) (i32.const 1)))
              (br $l))))
          (else
            (if (call $ieq (local.get $h) (local.get $nl) (i32.const 352) (i32.const 17))
              (then (return (i32.const 2)))) ;; chunked request bodies are not served
            (if (call $ieq (local.get $h) (local.get $nl) (i32.const 384) (i32.const 10))
              (then (local.set $keep (call $connection (local.get $v) (local.get $ve) (local.get $keep)))))))
        (local.set $h (i32.add (local.get $he) (i32.const 2)))
        (br $hl)))
    (local.set $size
      (i32.add (i32.sub (i32.add (local.get $end) (i32.const 4)) (local.get $p)) (local.get $body)))
    (if (i32.gt_u (local.get $size) (local.get $n))
      (then (return (select (i32.const 2) (i32.const 0)
                            (i32.gt_u (local.get $size) (global.get $IN_CAP))))))
    (global.set $req_size (local.get $size))
    (global.set $req_keep (local.get $keep))
    (i32.const 1))

  (func $append (param $s i32) (param $n i32)
    (call $copy (i32.add (global.get $OUT) (global.get $outlen)) (local.get $s) (local.get $n))
    (global.set $outlen (i32.add (global.get $outlen) (local.get $n))))

  (func $append_uint (param $v i32)
    (local $i i32)
    (local.set $i (i32.const 1024))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $l (local.get $v)))
    (call $append (local.get $i) (i32.sub (i32.const 1024) (local.get $i))))

  ;; Writes OUT, then returns action (CLOSE if the write failed).
  (func $flush (param $action i32) (result i32)
    (local $r i32)
    (if (global.get $outlen)
      (then
        (local.set $r (call $conn_write (global.get $OUT) (global.get $outlen)))
        (global.set $outlen (i32.const 0))
        (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (i32.const 0))))))
    (local.get $action))

  ;; Appends one answer; 0 if OUT was full and could not be written.
  (func $respond (param $keep i32) (result i32)
    (if (i32.gt_u (i32.add (global.get $outlen) (i32.const 256)) (global.get $OUT_CAP))
      (then (if (i32.ne (call $flush (i32.const 1)) (i32.const 1)) (then (return (i32.const 0))))))
    (call $append (i32.const 0) (i32.const 82))
    (call $append_uint (global.get $worker))
    (if (i32.eqz (local.get $keep)) (then (call $append (i32.const 96) (i32.const 19))))
    (call $append (i32.const 128) (i32.const 16))
    (i32.const 1))

  ;; One read per call: what is complete is answered, an incomplete tail is
  ;; pushed back and the call returns KEEP, so a request arriving in pieces
  ;; holds no instance while the rest is on its way.
  (func (export "wcluster_handle") (param $flags i32) (result i32)
    (local $n i32) (local $off i32) (local $r i32) (local $keep i32)
    (global.set $outlen (i32.const 0))
    (global.set $worker (call $worker_id))
    (local.set $n (call $conn_read (global.get $IN) (global.get $IN_CAP)))
    ;; end of stream or error: close
    (if (i32.le_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (block $more
      (loop $req
        (local.set $r (call $parse (i32.add (global.get $IN) (local.get $off))
                                   (i32.sub (local.get $n) (local.get $off))))
        (if (i32.eq (local.get $r) (i32.const 2))
          (then
            (call $append (i32.const 160) (i32.const 66))
            (return (call $flush (i32.const 0)))))
        (br_if $more (i32.eqz (local.get $r)))
        (local.set $keep (i32.and (global.get $req_keep)
                                  (i32.eqz (i32.and (local.get $flags) (i32.const 2)))))
        (if (i32.eqz (call $respond (local.get $keep))) (then (return (i32.const 0))))
        (if (i32.eqz (local.get $keep)) (then (return (call $flush (i32.const 0)))))
        (local.set $off (i32.add (local.get $off) (global.get $req_size)))
        (br $req)))
    (if (i32.eq (local.get $off) (local.get $n)) (then (return (call $flush (i32.const 1)))))
    ;; a buffer full of one unfinished request: its head is too large
    (if (i32.and (i32.eqz (local.get $off)) (i32.eq (local.get $n) (global.get $IN_CAP)))
      (then
        (call $append (i32.const 240) (i32.const 86))
        (return (call $flush (i32.const 0)))))
    ;; answer what is complete, push the incomplete tail back for the next call
    (if (i32.lt_s (call $conn_unread (i32.add (global.get $IN) (local.get $off))
                                     (i32.sub (local.get $n) (local.get $off)))
                  (i32.const 0))
      (then (return (call $flush (i32.const 0)))))
    (call $flush (i32.const 1)))
)
