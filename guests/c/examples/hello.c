/*
 * hello: an HTTP/1.1 handler answering every request 200 "hello world\n"
 * with the header X-Wcluster-Worker naming the worker. Same behaviour as
 * guests/go/hello: keep-alive (HTTP/1.1 by default, HTTP/1.0 only with
 * "Connection: keep-alive"), pipelining (every complete request in what was
 * read is answered with one write; an incomplete tail is pushed back with
 * conn_unread before returning KEEP), Content-Length bodies skipped, 400 on
 * garbage, "Connection: close" and CLOSE when the worker is draining.
 */
#include <stdbool.h>
#include <string.h>

#include "wcluster.h"

#define MAX_HEADER (32 << 10)

static char in[MAX_HEADER];
static char out[64 << 10];
static size_t outlen;

struct request {
	size_t size; /* header and body bytes */
	bool keep_alive;
};

enum { PARSE_MORE, PARSE_OK, PARSE_BAD };

static int32_t flush(int32_t action)
{
	if (outlen > 0) {
		int32_t r = wcluster_write_all(out, outlen);
		outlen = 0;
		if (r < 0)
			return WCLUSTER_CLOSE;
	}
	return action;
}

static void append(const char *s, size_t n)
{
	memcpy(out + outlen, s, n);
	outlen += n;
}

#define APPEND_LIT(s) append(s, sizeof(s) - 1)

static void append_uint(uint32_t v)
{
	char tmp[10];
	size_t i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	append(tmp + i, sizeof(tmp) - i);
}

/* Appends one answer. Returns false if the output could not be written. */
static bool respond(bool keep, int32_t worker)
{
	/* Answers are batched into one write; flush early only if out is full. */
	if (outlen + 256 > sizeof(out) && flush(WCLUSTER_KEEP) != WCLUSTER_KEEP)
		return false;
	APPEND_LIT("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
		   "X-Wcluster-Worker: ");
	append_uint((uint32_t)worker);
	if (!keep)
		APPEND_LIT("\r\nConnection: close");
	APPEND_LIT("\r\n\r\nhello world\n");
	return true;
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

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

static const char *find_crlf(const char *p, const char *end)
{
	for (; p + 1 < end; p++)
		if (p[0] == '\r' && p[1] == '\n')
			return p;
	return NULL;
}

static const char *find_crlf2(const char *p, size_t n)
{
	for (size_t i = 0; i + 3 < n; i++)
		if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
			return p + i;
	return NULL;
}

/* Applies a Connection header: a comma-separated list of tokens. */
static void connection_tokens(const char *v, const char *end, bool *keep)
{
	while (v < end) {
		const char *t = v;
		while (v < end && *v != ',')
			v++;
		const char *te = v;
		while (t < te && is_space(*t))
			t++;
		while (te > t && is_space(te[-1]))
			te--;
		if (ieq(t, (size_t)(te - t), "close"))
			*keep = false;
		else if (ieq(t, (size_t)(te - t), "keep-alive"))
			*keep = true;
		v++;
	}
}

/*
 * Finds one complete request at the start of b. PARSE_MORE while more bytes
 * are needed; PARSE_BAD for a request this handler cannot serve.
 */
static int parse(const char *b, size_t n, struct request *req)
{
	const char *end = find_crlf2(b, n);
	if (end == NULL)
		return PARSE_MORE;
	/* The request line: "METHOD TARGET HTTP/1.x". */
	const char *le = find_crlf(b, end + 2); /* found at end at the latest */
	const char *sp = NULL;
	for (const char *p = b; p < le; p++)
		if (*p == ' ')
			sp = p;
	if (sp == NULL || (size_t)(le - sp - 1) < 7 || memcmp(sp + 1, "HTTP/1.", 7) != 0)
		return PARSE_BAD;
	req->keep_alive = (size_t)(le - sp - 1) == 8 && sp[8] == '1';

	size_t body = 0;
	for (const char *h = le + 2; h < end;) {
		const char *he = find_crlf(h, end + 2);
		const char *colon = memchr(h, ':', (size_t)(he - h));
		if (colon == NULL)
			return PARSE_BAD;
		const char *v = colon + 1, *ve = he;
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
				if (*d < '0' || *d > '9' || body > MAX_HEADER)
					return PARSE_BAD;
				body = body * 10 + (size_t)(*d - '0');
			}
		} else if (ieq(h, nl, "Transfer-Encoding")) {
			return PARSE_BAD; /* chunked request bodies are not served */
		} else if (ieq(h, nl, "Connection")) {
			connection_tokens(v, ve, &req->keep_alive);
		}
		h = he + 2;
	}
	req->size = (size_t)(end + 4 - b) + body;
	if (req->size > n)
		return req->size > sizeof(in) ? PARSE_BAD : PARSE_MORE;
	return PARSE_OK;
}

/*
 * Reads what the peer sent, answers every complete request in it with one
 * write, and pushes an incomplete tail back for the next call.
 */
static int32_t serve(int32_t flags)
{
	size_t n = 0;
	int answered = 0;
	int32_t worker = wcluster_worker_id();
	outlen = 0;
	for (;;) {
		int32_t m = wcluster_read(in + n, sizeof(in) - n);
		if (m <= 0)
			return flush(WCLUSTER_CLOSE); /* end of stream or error */
		n += (size_t)m;
		size_t off = 0;
		for (;;) {
			struct request req;
			int r = parse(in + off, n - off, &req);
			if (r == PARSE_BAD) {
				APPEND_LIT("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
				return flush(WCLUSTER_CLOSE);
			}
			if (r == PARSE_MORE)
				break;
			bool keep = req.keep_alive && (flags & WCLUSTER_FLAG_DRAINING) == 0;
			if (!respond(keep, worker))
				return WCLUSTER_CLOSE;
			answered++;
			if (!keep)
				return flush(WCLUSTER_CLOSE);
			off += req.size;
		}
		if (off == n)
			return flush(WCLUSTER_KEEP);
		if (answered > 0) {
			/* Answer what is complete, keep the tail for the next call. */
			if (wcluster_unread(in + off, n - off) < 0)
				return flush(WCLUSTER_CLOSE);
			return flush(WCLUSTER_KEEP);
		}
		if (n == sizeof(in)) {
			APPEND_LIT("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
			return flush(WCLUSTER_CLOSE);
		}
		/* Only part of one request so far (off is 0): wait for the rest in this call. */
	}
}

WCLUSTER_HANDLER(serve)
