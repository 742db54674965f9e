/*
 * wcluster.h - C guest SDK for the wcluster host ABI v1 (see abi/README.md).
 *
 * Header only: include it in exactly the translation units that need it.
 * Every helper is static inline, so only what a handler uses ends up in the
 * module. A handler is an int32_t function taking the flags; export it with
 *
 *     static int32_t serve(int32_t flags) { ... return WCLUSTER_CLOSE; }
 *     WCLUSTER_HANDLER(serve)
 *
 * and build a WASI reactor:
 *
 *     clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor \
 *           -I guests/c/sdk -o handler.wasm handler.c
 *
 * State that belongs to one connection must not live in globals across a
 * WCLUSTER_KEEP: the next call may run on another instance. Push unconsumed
 * bytes back with wcluster_unread() instead.
 *
 * stdout and stderr (printf, fprintf(stderr, ...)) go to the worker's log,
 * never to the client; stdin is empty. Answer with wcluster_write_all().
 */
#ifndef WCLUSTER_H
#define WCLUSTER_H

#include <stddef.h>
#include <stdint.h>

#ifndef __wasm32__
#error "wcluster.h targets wasm32 (clang --target=wasm32-wasi)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version and names. */
#define WCLUSTER_ABI_VERSION 1
#define WCLUSTER_HOST_MODULE "wcluster"

/* Flags passed to wcluster_handle. */
#define WCLUSTER_FLAG_NEW      1 /* first call for this connection */
#define WCLUSTER_FLAG_DRAINING 2 /* worker stopping: finish, answer "Connection: close", return CLOSE */

/* Results of wcluster_handle (a negative value is logged as an error and closes). */
#define WCLUSTER_CLOSE 0
#define WCLUSTER_KEEP  1

/* Error codes returned by host functions: always negative. */
#define WCLUSTER_ERR_FAULT     (-1) /* (pointer, length) outside guest memory */
#define WCLUSTER_ERR_INVALID   (-2) /* argument out of range */
#define WCLUSTER_ERR_CLOSED    (-3) /* connection reset or closed: return CLOSE */
#define WCLUSTER_ERR_TIMEOUT   (-4) /* idle timeout or call deadline: return CLOSE */
#define WCLUSTER_ERR_TOO_LARGE (-5) /* conn_unread would hold more than WCLUSTER_MAX_UNREAD */
#define WCLUSTER_ERR_NO_CONN   (-6) /* called outside wcluster_handle */
#define WCLUSTER_ERR_SHUTDOWN  (-7) /* conn_write after conn_close_write */
#define WCLUSTER_ERR_NOT_FOUND (-8) /* config_get: no such name; kv_get: the key has no value */
#define WCLUSTER_ERR_UNAVAILABLE (-9) /* the key-value store failed: try again later (HTTP 503) */
#define WCLUSTER_ERR_QUOTA     (-10) /* the change would pass the tenant's kv_quota; nothing changed */

/* Log levels. */
#define WCLUSTER_LOG_DEBUG 0
#define WCLUSTER_LOG_INFO  1
#define WCLUSTER_LOG_WARN  2
#define WCLUSTER_LOG_ERROR 3

/* Most bytes conn_unread may hold for one connection. */
#define WCLUSTER_MAX_UNREAD 65536

/* Longest key of the key-value store, in bytes. */
#define WCLUSTER_KV_MAX_KEY 1024

/* ---- Raw host functions (import module "wcluster"). Pointers are i32. ---- */

#define WCLUSTER_IMPORT_(name) \
	__attribute__((import_module(WCLUSTER_HOST_MODULE), import_name(name)))

/* (buf i32, buf_len i32) -> i32: count > 0, 0 at end of stream, or an error. */
WCLUSTER_IMPORT_("conn_read") int32_t wcluster_conn_read(void *buf, int32_t buf_len);
/* (buf i32, buf_len i32) -> i32: writes all bytes; buf_len or an error. */
WCLUSTER_IMPORT_("conn_write") int32_t wcluster_conn_write(const void *buf, int32_t buf_len);
/* () -> i32: half-close; 0 or an error. */
WCLUSTER_IMPORT_("conn_close_write") int32_t wcluster_conn_close_write(void);
/* (buf i32, buf_len i32) -> i32: push bytes back in front of the read stream; 0 or an error. */
WCLUSTER_IMPORT_("conn_unread") int32_t wcluster_conn_unread(const void *buf, int32_t buf_len);
/* (buf i32, buf_len i32) -> i32: full length of the address text (written only if it fits). */
WCLUSTER_IMPORT_("conn_peer_addr") int32_t wcluster_conn_peer_addr(void *buf, int32_t buf_len);
/* () -> i64: connection id within the worker, 0 outside a connection. */
WCLUSTER_IMPORT_("conn_id") int64_t wcluster_conn_id(void);
/* () -> i32: worker id 1..N. */
WCLUSTER_IMPORT_("worker_id") int32_t wcluster_worker_id(void);
/* (level i32, buf i32, buf_len i32) -> i32: 0 or an error. */
WCLUSTER_IMPORT_("log") int32_t wcluster_log_raw(int32_t level, const void *buf, int32_t buf_len);

/*
 * Added within v1: a module that uses one of these needs a host that has it;
 * one that does not (they are imported only when called) runs on any v1 host.
 */
/* (key, key_len, buf, buf_len) -> i32: full length of the config value (copies what fits). */
WCLUSTER_IMPORT_("config_get") int32_t wcluster_config_get(const void *key, int32_t key_len, void *buf, int32_t buf_len);
/* The key-value store, the tenant's own, shared by every worker and durable. */
/* (key, key_len, buf, buf_len) -> i32: full length of the value (copies what fits), or ERR_NOT_FOUND. */
WCLUSTER_IMPORT_("kv_get") int32_t wcluster_kv_get_raw(const void *key, int32_t key_len, void *buf, int32_t buf_len);
/* (key, key_len, value, value_len) -> i32: 0 once durable and visible to every worker. */
WCLUSTER_IMPORT_("kv_set") int32_t wcluster_kv_set_raw(const void *key, int32_t key_len, const void *value, int32_t value_len);
/* (key, key_len) -> i32: 0, also when the key had no value. */
WCLUSTER_IMPORT_("kv_delete") int32_t wcluster_kv_delete_raw(const void *key, int32_t key_len);
/* (key, key_len, delta i64, out i32) -> i32: 0, the sum written as a little-endian i64 at out. */
WCLUSTER_IMPORT_("kv_add") int32_t wcluster_kv_add_raw(const void *key, int32_t key_len, int64_t delta, int64_t *out);
/* (prefix, prefix_len, buf, buf_len) -> i32: full length of the listing (u32 LE length + key, ...). */
WCLUSTER_IMPORT_("kv_list") int32_t wcluster_kv_list_raw(const void *prefix, int32_t prefix_len, void *buf, int32_t buf_len);

/* ---- Exporting a handler ---- */

/*
 * WCLUSTER_HANDLER(fn) defines the two exports of an ABI v1 handler:
 * wcluster_abi_v1 (the version marker, never called) and wcluster_handle,
 * which calls fn(flags). fn has type int32_t (int32_t flags) and returns
 * WCLUSTER_CLOSE, WCLUSTER_KEEP or a negative error.
 */
#define WCLUSTER_HANDLER(fn)                                                   \
	__attribute__((export_name("wcluster_abi_v1"))) void wcluster_abi_v1(void) {} \
	__attribute__((export_name("wcluster_handle"))) int32_t wcluster_handle(int32_t flags) \
	{                                                                          \
		return (fn)(flags);                                                \
	}

/* ---- Helpers ---- */

/* One read: count > 0, 0 at end of stream, or a negative error. */
static inline int32_t wcluster_read(void *buf, size_t len)
{
	if (len == 0)
		return 0;
	if (len > INT32_MAX)
		len = INT32_MAX;
	return wcluster_conn_read(buf, (int32_t)len);
}

/*
 * Reads until len bytes arrived or the stream ended. Returns the count
 * (less than len only at end of stream) or a negative error.
 */
static inline int32_t wcluster_read_full(void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		int32_t n = wcluster_read((char *)buf + got, len - got);
		if (n < 0)
			return n;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (int32_t)got;
}

/* Writes all len bytes. Returns 0 or a negative error. */
static inline int32_t wcluster_write_all(const void *buf, size_t len)
{
	while (len > 0) {
		int32_t chunk = len > INT32_MAX ? INT32_MAX : (int32_t)len;
		int32_t n = wcluster_conn_write(buf, chunk);
		if (n < 0)
			return n;
		if (n == 0)
			return WCLUSTER_ERR_CLOSED; /* not expected: the host writes everything */
		buf = (const char *)buf + n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes a NUL-terminated string. Returns 0 or a negative error. */
static inline int32_t wcluster_write_str(const char *s)
{
	return wcluster_write_all(s, __builtin_strlen(s));
}

/* Half-closes the connection. Returns 0 or a negative error. */
static inline int32_t wcluster_close_write(void)
{
	return wcluster_conn_close_write();
}

/* Pushes len bytes back for the next read (at most WCLUSTER_MAX_UNREAD pending). */
static inline int32_t wcluster_unread(const void *buf, size_t len)
{
	if (len == 0)
		return 0;
	if (len > WCLUSTER_MAX_UNREAD)
		return WCLUSTER_ERR_TOO_LARGE;
	return wcluster_conn_unread(buf, (int32_t)len);
}

/*
 * Writes the peer's address ("127.0.0.1:5000", "[::1]:5000") into buf as a
 * NUL-terminated string, like snprintf: returns the full length of the text
 * (if >= cap, it was not written and buf holds ""), or a negative error.
 */
static inline int32_t wcluster_peer_addr(char *buf, size_t cap)
{
	if (cap == 0)
		return wcluster_conn_peer_addr(buf, 0);
	int32_t room = cap - 1 > INT32_MAX ? INT32_MAX : (int32_t)(cap - 1);
	int32_t n = wcluster_conn_peer_addr(buf, room);
	if (n < 0 || n > room) {
		buf[0] = 0;
		return n;
	}
	buf[n] = 0;
	return n;
}

/* The id (1..N) of the worker process serving the call. */
static inline int32_t wcluster_worker(void) { return wcluster_worker_id(); }

/* The connection's id within its worker (0 outside a connection). */
static inline int64_t wcluster_conn(void) { return wcluster_conn_id(); }

/* Logs a NUL-terminated message at level. Returns 0 or a negative error. */
static inline int32_t wcluster_log(int32_t level, const char *msg)
{
	size_t n = __builtin_strlen(msg);
	if (n == 0)
		return 0;
	return wcluster_log_raw(level, msg, n > INT32_MAX ? INT32_MAX : (int32_t)n);
}

/* Logs len bytes at level. */
static inline int32_t wcluster_log_n(int32_t level, const void *msg, size_t len)
{
	if (len == 0)
		return 0;
	return wcluster_log_raw(level, msg, len > INT32_MAX ? INT32_MAX : (int32_t)len);
}

/* Clamps a length to what an i32 argument holds; the host then refuses it (ERR_TOO_LARGE). */
static inline int32_t wcluster_len_(size_t n) { return n > INT32_MAX ? INT32_MAX : (int32_t)n; }

/*
 * Copies the config value named key into buf (at most cap bytes, no NUL) and
 * returns its full length: call again with a larger buffer if it is > cap.
 * WCLUSTER_ERR_NOT_FOUND when the operator set no such value.
 */
static inline int32_t wcluster_config(const char *key, void *buf, size_t cap)
{
	return wcluster_config_get(key, wcluster_len_(__builtin_strlen(key)), buf, wcluster_len_(cap));
}

/*
 * Copies the value of the key (key_len bytes, any bytes) into buf, at most
 * cap bytes, and returns the value's full length: if it is > cap, call again
 * with a buffer that large. WCLUSTER_ERR_NOT_FOUND when the key has no value;
 * WCLUSTER_ERR_TOO_LARGE for a key over WCLUSTER_KV_MAX_KEY;
 * WCLUSTER_ERR_UNAVAILABLE when the store failed.
 */
static inline int32_t wcluster_kv_get(const void *key, size_t key_len, void *buf, size_t cap)
{
	return wcluster_kv_get_raw(key, wcluster_len_(key_len), buf, wcluster_len_(cap));
}

/*
 * Sets the key to the value. Returns 0 once every worker reads it, or
 * WCLUSTER_ERR_TOO_LARGE (key or value over the limits), WCLUSTER_ERR_QUOTA
 * (the tenant's store is full; nothing changed), WCLUSTER_ERR_UNAVAILABLE.
 */
static inline int32_t wcluster_kv_set(const void *key, size_t key_len, const void *value, size_t value_len)
{
	return wcluster_kv_set_raw(key, wcluster_len_(key_len), value, wcluster_len_(value_len));
}

/* Removes the key. Returns 0, also when it had no value, or a negative error. */
static inline int32_t wcluster_kv_delete(const void *key, size_t key_len)
{
	return wcluster_kv_delete_raw(key, wcluster_len_(key_len));
}

/*
 * Atomically adds delta to the integer value of the key (decimal text; no
 * value counts as 0) and stores the sum in *sum. Returns 0, or
 * WCLUSTER_ERR_INVALID (not an integer, or overflow), WCLUSTER_ERR_QUOTA, ...
 */
static inline int32_t wcluster_kv_add(const void *key, size_t key_len, int64_t delta, int64_t *sum)
{
	return wcluster_kv_add_raw(key, wcluster_len_(key_len), delta, sum);
}

/*
 * Lists the keys beginning with prefix (in byte order, at most 1,000) into
 * buf, at most cap bytes, and returns the listing's full length (if > cap,
 * call again with a buffer that large). Walk it with wcluster_kv_next.
 */
static inline int32_t wcluster_kv_list(const void *prefix, size_t prefix_len, void *buf, size_t cap)
{
	return wcluster_kv_list_raw(prefix, wcluster_len_(prefix_len), buf, wcluster_len_(cap));
}

/*
 * Steps through a listing of len bytes from wcluster_kv_list: at *off, sets
 * *key and *key_len to the next key and advances *off. Returns 0 at its end.
 *
 *     size_t off = 0; const char *k; size_t kl;
 *     while (wcluster_kv_next(buf, len, &off, &k, &kl)) ...
 */
static inline int wcluster_kv_next(const void *list, size_t len, size_t *off, const char **key, size_t *key_len)
{
	const unsigned char *p = (const unsigned char *)list + *off;
	if (*off + 4 > len)
		return 0;
	size_t n = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
	if (n > len - *off - 4)
		return 0;
	*key = (const char *)p + 4;
	*key_len = n;
	*off += 4 + n;
	return 1;
}

/* The symbolic name of an error code ("ERR_CLOSED"), or "" if it is not one. */
static inline const char *wcluster_strerror(int32_t code)
{
	switch (code) {
	case WCLUSTER_ERR_FAULT: return "ERR_FAULT";
	case WCLUSTER_ERR_INVALID: return "ERR_INVALID";
	case WCLUSTER_ERR_CLOSED: return "ERR_CLOSED";
	case WCLUSTER_ERR_TIMEOUT: return "ERR_TIMEOUT";
	case WCLUSTER_ERR_TOO_LARGE: return "ERR_TOO_LARGE";
	case WCLUSTER_ERR_NO_CONN: return "ERR_NO_CONN";
	case WCLUSTER_ERR_SHUTDOWN: return "ERR_SHUTDOWN";
	case WCLUSTER_ERR_NOT_FOUND: return "ERR_NOT_FOUND";
	case WCLUSTER_ERR_UNAVAILABLE: return "ERR_UNAVAILABLE";
	case WCLUSTER_ERR_QUOTA: return "ERR_QUOTA";
	}
	return "";
}

#ifdef __cplusplus
}
#endif

#endif /* WCLUSTER_H */
