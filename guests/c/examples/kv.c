/*
 * kv: an HTTP key-value API on wcluster's key-value store, one request per
 * call (a kept-alive connection holds no instance between requests), the
 * same API as guests/go/kv:
 *
 *     PUT /kv/KEY (body: the value) -> 204
 *     GET /kv/KEY -> 200 with the value, or 404
 *     DELETE /kv/KEY -> 204
 *     POST /kv/KEY?add=N -> 200 with the new integer value
 *     GET /kv/?prefix=P -> 200, the keys beginning with P, one per line
 *
 * KEY and P are percent-decoded. 413 for a key or value over the store's
 * limits or its quota, 503 while the store is unavailable. Every answer
 * names the worker (X-Wcluster-Worker); "Connection: close" when the
 * request asks for it or the worker is draining. Bytes read past the
 * request (a pipelined one) are pushed back for the next call.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "wcluster.h"

#define MAX_HEAD (16 << 10)
#define MAX_BODY (16 << 20)

/* A growable byte buffer. Its bytes never outlive one call's request. */
struct buf {
	char *p;
	size_t len, cap;
};

static struct buf in, val, out;
static char key[MAX_HEAD], arg[MAX_HEAD];

static bool reserve(struct buf *b, size_t need)
{
	if (need <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < need)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (p == NULL)
		return false;
	b->p = p;
	b->cap = cap;
	return true;
}

static bool put(struct buf *b, const void *s, size_t n)
{
	if (!reserve(b, b->len + n))
		return false;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return true;
}

static bool put_str(struct buf *b, const char *s) { return put(b, s, strlen(s)); }

static bool put_int(struct buf *b, int64_t v)
{
	char tmp[21];
	size_t i = sizeof(tmp);
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	do {
		tmp[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		tmp[--i] = '-';
	return put(b, tmp + i, sizeof(tmp) - i);
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }

static bool ieq(const char *a, size_t n, const char *lit)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (lit[i] == 0 || lower((unsigned char)a[i]) != lower((unsigned char)lit[i]))
			return false;
	return lit[i] == 0;
}

static bool eq(const char *a, size_t n, const char *lit) { return strlen(lit) == n && memcmp(a, lit, n) == 0; }

static bool is_space(char c) { return c == ' ' || c == '\t'; }

static const char *find(const char *p, const char *end, const char *lit)
{
	size_t n = strlen(lit);
	for (; p + n <= end; p++)
		if (memcmp(p, lit, n) == 0)
			return p;
	return NULL;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)lower((unsigned char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decodes [s, end) into dst ('+' is a space in a query). Returns the length or -1. */
static long unescape(const char *s, const char *end, char *dst, bool query)
{
	long n = 0;
	while (s < end) {
		if (*s == '%') {
			if (end - s < 3 || hexval(s[1]) < 0 || hexval(s[2]) < 0)
				return -1;
			dst[n++] = (char)(hexval(s[1]) << 4 | hexval(s[2]));
			s += 3;
		} else {
			dst[n++] = query && *s == '+' ? ' ' : *s;
			s++;
		}
	}
	return n;
}

/* Finds the query parameter name in [q, end): sets *v, *ve to its raw value. */
static bool query_param(const char *q, const char *end, const char *name, const char **v, const char **ve)
{
	while (q < end) {
		const char *pe = memchr(q, '&', (size_t)(end - q));
		if (pe == NULL)
			pe = end;
		const char *eqs = memchr(q, '=', (size_t)(pe - q));
		const char *ne = eqs ? eqs : pe;
		if (eq(q, (size_t)(ne - q), name)) {
			*v = eqs ? eqs + 1 : pe;
			*ve = pe;
			return true;
		}
		q = pe + 1;
	}
	return false;
}

static const char *status_text(int code)
{
	switch (code) {
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Request Entity Too Large";
	case 431: return "Request Header Fields Too Large";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	}
	return "Internal Server Error";
}

/* The HTTP status for a host error code. */
static int status_of(int32_t err)
{
	switch (err) {
	case WCLUSTER_ERR_NOT_FOUND: return 404;
	case WCLUSTER_ERR_TOO_LARGE:
	case WCLUSTER_ERR_QUOTA: return 413;
	case WCLUSTER_ERR_UNAVAILABLE: return 503;
	case WCLUSTER_ERR_INVALID: return 409;
	}
	return 500;
}

/* Writes one answer: the head, then body (len bytes). Returns false if the write failed. */
static bool answer(int code, const void *body, size_t len, bool keep)
{
	out.len = 0;
	bool ok = put_str(&out, "HTTP/1.1 ") && put_int(&out, code) && put_str(&out, " ") &&
		  put_str(&out, status_text(code)) && put_str(&out, "\r\nContent-Length: ") &&
		  put_int(&out, (int64_t)len) && put_str(&out, "\r\nX-Wcluster-Worker: ") &&
		  put_int(&out, wcluster_worker_id()) &&
		  put_str(&out, keep ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n") && put(&out, body, len);
	if (!ok)
		return false;
	return wcluster_write_all(out.p, out.len) == 0;
}

/* An error answer naming the code, as text. */
static bool answer_err(int32_t err, bool keep)
{
	struct buf *b = &val;
	b->len = 0;
	if (err != WCLUSTER_ERR_NOT_FOUND && !(put_str(b, wcluster_strerror(err)) && put_str(b, "\n")))
		b->len = 0;
	return answer(status_of(err), b->p, b->len, keep);
}

struct request {
	const char *method, *target, *body;
	size_t method_len, target_len, body_len;
	size_t size; /* head and body bytes */
	bool keep_alive;
};

/* Runs one parsed request against the store and answers it. */
static bool handle(const struct request *r, bool keep)
{
	const char *t = r->target, *te = r->target + r->target_len;
	const char *q = memchr(t, '?', (size_t)(te - t));
	const char *pe = q ? q : te;
	if (q)
		q++;
	else
		q = te;
	if ((size_t)(pe - t) < 4 || memcmp(t, "/kv/", 4) != 0) {
		static const char msg[] = "not found: use /kv/KEY\n";
		return answer(404, msg, sizeof(msg) - 1, keep);
	}
	long klen = unescape(t + 4, pe, key, false);
	if (klen < 0) {
		static const char msg[] = "bad percent-escape in the key\n";
		return answer(400, msg, sizeof(msg) - 1, keep);
	}
	const char *m = r->method;
	size_t ml = r->method_len;
	const char *v, *ve;

	if (klen == 0 && eq(m, ml, "GET")) {
		long plen = 0;
		if (query_param(q, te, "prefix", &v, &ve) && (plen = unescape(v, ve, arg, true)) < 0)
			return answer(400, "bad prefix\n", 11, keep);
		int32_t n;
		while ((n = wcluster_kv_list(arg, (size_t)plen, val.p, val.cap)) >= 0 && (size_t)n > val.cap)
			if (!reserve(&val, (size_t)n))
				return answer(500, NULL, 0, keep);
		if (n < 0)
			return answer_err(n, keep);
		struct buf lines = {0}; /* one key a line */
		size_t off = 0, kl;
		const char *k;
		bool ok = true;
		while (ok && wcluster_kv_next(val.p, (size_t)n, &off, &k, &kl))
			ok = put(&lines, k, kl) && put(&lines, "\n", 1);
		ok = ok && answer(200, lines.p, lines.len, keep);
		free(lines.p);
		return ok;
	}
	if (eq(m, ml, "GET")) {
		int32_t n;
		while ((n = wcluster_kv_get(key, (size_t)klen, val.p, val.cap)) >= 0 && (size_t)n > val.cap)
			if (!reserve(&val, (size_t)n))
				return answer(500, NULL, 0, keep);
		if (n < 0)
			return answer_err(n, keep);
		return answer(200, val.p, (size_t)n, keep);
	}
	if (eq(m, ml, "PUT")) {
		int32_t err = wcluster_kv_set(key, (size_t)klen, r->body, r->body_len);
		return err < 0 ? answer_err(err, keep) : answer(204, NULL, 0, keep);
	}
	if (eq(m, ml, "DELETE")) {
		int32_t err = wcluster_kv_delete(key, (size_t)klen);
		return err < 0 ? answer_err(err, keep) : answer(204, NULL, 0, keep);
	}
	if (eq(m, ml, "POST") && query_param(q, te, "add", &v, &ve)) {
		long n = unescape(v, ve, arg, true);
		int64_t delta = 0;
		bool neg = n > 0 && arg[0] == '-';
		long i = neg || (n > 0 && arg[0] == '+') ? 1 : 0;
		bool ok = n > i && n - i <= 18; /* fits an int64 without overflow checks */
		for (; ok && i < n; i++) {
			if (arg[i] < '0' || arg[i] > '9')
				ok = false;
			else
				delta = delta * 10 + (arg[i] - '0');
		}
		if (!ok)
			return answer(400, "add: give an integer\n", 21, keep);
		int64_t sum;
		int32_t err = wcluster_kv_add(key, (size_t)klen, neg ? -delta : delta, &sum);
		if (err < 0)
			return answer_err(err, keep);
		val.len = 0;
		if (!put_int(&val, sum) || !put(&val, "\n", 1))
			return answer(500, NULL, 0, keep);
		return answer(200, val.p, val.len, keep);
	}
	return answer(405, NULL, 0, keep);
}

enum { PARSE_MORE, PARSE_OK, PARSE_BAD, PARSE_BIG, PARSE_CHUNKED };

/* Parses the head at the start of b (n bytes); PARSE_MORE until it is complete. */
static int parse(const char *b, size_t n, struct request *r)
{
	const char *end = b + n;
	const char *he = find(b, end, "\r\n\r\n");
	if (he == NULL)
		return n >= MAX_HEAD ? PARSE_BIG : PARSE_MORE;
	/* The request line: "METHOD TARGET HTTP/1.x". */
	const char *le = find(b, he + 2, "\r\n");
	const char *s1 = memchr(b, ' ', (size_t)(le - b));
	if (s1 == NULL)
		return PARSE_BAD;
	const char *s2 = memchr(s1 + 1, ' ', (size_t)(le - s1 - 1));
	if (s2 == NULL || le - s2 - 1 != 8 || memcmp(s2 + 1, "HTTP/1.", 7) != 0 || s1 == b || s2 == s1 + 1)
		return PARSE_BAD;
	r->method = b;
	r->method_len = (size_t)(s1 - b);
	r->target = s1 + 1;
	r->target_len = (size_t)(s2 - s1 - 1);
	r->keep_alive = s2[8] == '1';

	size_t body = 0;
	for (const char *h = le + 2; h < he + 2;) {
		const char *hl = find(h, he + 2, "\r\n");
		const char *colon = memchr(h, ':', (size_t)(hl - h));
		if (colon == NULL)
			return PARSE_BAD;
		const char *v = colon + 1, *ve = hl;
		while (v < ve && is_space(*v))
			v++;
		while (ve > v && is_space(ve[-1]))
			ve--;
		size_t nl = (size_t)(colon - h);
		if (ieq(h, nl, "Content-Length")) {
			if (v == ve)
				return PARSE_BAD;
			body = 0;
			for (const char *d = v; d < ve; d++) {
				if (*d < '0' || *d > '9')
					return PARSE_BAD;
				if (body > MAX_BODY)
					return PARSE_BIG;
				body = body * 10 + (size_t)(*d - '0');
			}
			if (body > MAX_BODY)
				return PARSE_BIG;
		} else if (ieq(h, nl, "Transfer-Encoding")) {
			return PARSE_CHUNKED;
		} else if (ieq(h, nl, "Connection")) {
			/* A comma-separated list of tokens. */
			for (const char *t = v; t < ve;) {
				const char *c = memchr(t, ',', (size_t)(ve - t));
				const char *te = c ? c : ve;
				const char *ts = t;
				while (ts < te && is_space(*ts))
					ts++;
				const char *tz = te;
				while (tz > ts && is_space(tz[-1]))
					tz--;
				if (ieq(ts, (size_t)(tz - ts), "close"))
					r->keep_alive = false;
				else if (ieq(ts, (size_t)(tz - ts), "keep-alive"))
					r->keep_alive = true;
				t = te + 1;
			}
		}
		h = hl + 2;
	}
	r->body = he + 4;
	r->body_len = body;
	r->size = (size_t)(he + 4 - b) + body;
	return PARSE_OK;
}

/* Reads into in until it holds at least need bytes. Returns false at end of stream or on an error. */
static bool fill(size_t need)
{
	if (!reserve(&in, need))
		return false;
	while (in.len < need) {
		/* No further than the request: only the head's read may read ahead. */
		int32_t m = wcluster_read(in.p + in.len, need - in.len);
		if (m <= 0)
			return false;
		in.len += (size_t)m;
	}
	return true;
}

/*
 * Answers every complete request in what was read; an incomplete tail after
 * an answered request is pushed back for the next call (the host calls again
 * when more bytes arrive), so pipelined requests are all answered.
 */
static int32_t serve(int32_t flags)
{
	size_t off = 0;
	in.len = 0;
	if (!reserve(&in, MAX_HEAD) || !reserve(&val, 4096))
		return WCLUSTER_CLOSE;
	for (;;) {
		struct request r;
		int p = parse(in.p + off, in.len - off, &r);
		bool complete = p != PARSE_MORE && (p != PARSE_OK || r.size <= in.len - off);
		if (!complete && off > 0) {
			if (wcluster_unread(in.p + off, in.len - off) < 0)
				return WCLUSTER_CLOSE;
			return WCLUSTER_KEEP;
		}
		if (p == PARSE_MORE) {
			/* Read at most the head's room, so that what is read ahead stays small. */
			int32_t m = wcluster_read(in.p + in.len, MAX_HEAD - in.len);
			if (m <= 0)
				return WCLUSTER_CLOSE; /* end of stream or error */
			in.len += (size_t)m;
			continue;
		}
		switch (p) {
		case PARSE_BAD:
			answer(400, NULL, 0, false);
			return WCLUSTER_CLOSE;
		case PARSE_BIG:
			answer(in.len - off >= MAX_HEAD ? 431 : 413, NULL, 0, false);
			return WCLUSTER_CLOSE;
		case PARSE_CHUNKED:
			answer(501, "chunked request bodies are not served: send Content-Length\n", 59, false);
			return WCLUSTER_CLOSE;
		}
		if (!complete) {
			/* The first request's body (off is 0): fill may move in, so keep offsets. */
			size_t bo = (size_t)(r.body - in.p), mo = (size_t)(r.method - in.p), to = (size_t)(r.target - in.p);
			if (!fill(r.size))
				return WCLUSTER_CLOSE;
			r.method = in.p + mo;
			r.target = in.p + to;
			r.body = in.p + bo;
		}
		bool keep = r.keep_alive && (flags & WCLUSTER_FLAG_DRAINING) == 0;
		if (!handle(&r, keep) || !keep)
			return WCLUSTER_CLOSE;
		off += r.size;
		if (off == in.len)
			return WCLUSTER_KEEP;
	}
}

WCLUSTER_HANDLER(serve)
