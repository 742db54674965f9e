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

/* The two answers, built on first use: the worker's id does not change. */
static char answer_keep[256], answer_close[256];
static size_t answer_keep_len, answer_close_len;

static size_t build_answer(char *a, bool keep)
{
	outlen = 0;
	APPEND_LIT("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
		   "X-Wcluster-Worker: ");
	append_uint((uint32_t)wcluster_worker_id());
	if (!keep)
		APPEND_LIT("\r\nConnection: close");
	APPEND_LIT("\r\n\r\nhello world\n");
	memcpy(a, out, outlen);
	size_t n = outlen;
	outlen = 0;
	return n;
}

/* Appends one answer. Returns false if the output could not be written. */
static bool respond(bool keep)
{
	/* Answers are batched into one write; flush early only if out is full. */
	if (outlen + sizeof(answer_keep) > sizeof(out) && flush(WCLUSTER_KEEP) != WCLUSTER_KEEP)
		return false;
	if (keep)
		append(answer_keep, answer_keep_len);
	else
		append(answer_close, answer_close_len);
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

/*
 * find_byte finds c in [p, end) eight bytes at a time: one step of the loop
 * (and of the host's time-limit check, which every loop iteration passes)
 * for eight bytes.
 */
static const char *find_byte(const char *p, const char *end, char c)
{
	const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	const uint64_t pattern = ones * (unsigned char)c;
	while (end - p >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		v ^= pattern; /* a zero byte where c was */
		/* The lowest flagged byte is the first zero byte. */
		uint64_t z = (v - ones) & ~v & highs;
		if (z != 0)
			return p + (__builtin_ctzll(z) >> 3);
		p += 8;
	}
	for (; p < end; p++)
		if (*p == c)
			return p;
	return NULL;
}

/* find_crlf finds the first "\r\n" in [p, end). */
static const char *find_crlf(const char *p, const char *end)
{
	while (end - p >= 2) {
		const char *cr = find_byte(p, end - 1, '\r');
		if (cr == NULL)
			return NULL;
		if (cr[1] == '\n')
			return cr;
		p = cr + 1;
	}
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
 * Finds one complete request at the start of b, reading each line of its
 * head once. PARSE_MORE while more bytes are needed; PARSE_BAD for a
 * request this handler cannot serve (known as soon as its bad line is whole).
 */
static int parse(const char *b, size_t n, struct request *req)
{
	const char *end = b + n;
	/* The request line: "METHOD TARGET HTTP/1.x". */
	const char *le = find_crlf(b, end);
	if (le == NULL)
		return PARSE_MORE;
	const char *sp = le;
	while (sp > b && sp[-1] != ' ')
		sp--;
	sp--; /* the last space, or b - 1 if there is none */
	if (sp < b || (size_t)(le - sp - 1) < 7 || memcmp(sp + 1, "HTTP/1.", 7) != 0)
		return PARSE_BAD;
	req->keep_alive = (size_t)(le - sp - 1) == 8 && sp[8] == '1';

	size_t body = 0;
	const char *h = le + 2;
	for (;;) {
		const char *he = find_crlf(h, end);
		if (he == NULL)
			return PARSE_MORE;
		if (he == h)
			break; /* the empty line: the end of the head */
		const char *colon = find_byte(h, he, ':');
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
	req->size = (size_t)(h + 2 - b) + body;
	if (req->size > n)
		return req->size > sizeof(in) ? PARSE_BAD : PARSE_MORE;
	return PARSE_OK;
}

/*
 * Reads what the peer sent, answers every complete request in it with one
 * write, and pushes an incomplete tail back for the next call. It reads
 * once per call: the host calls when bytes are there, and waiting in
 * wcluster_read for the rest of a request would hold the instance while a
 * slow client takes its time.
 */
static int32_t serve(int32_t flags)
{
	if (answer_keep_len == 0) {
		answer_keep_len = build_answer(answer_keep, true);
		answer_close_len = build_answer(answer_close, false);
	}
	outlen = 0;
	int32_t m = wcluster_read(in, sizeof(in));
	if (m <= 0)
		return flush(WCLUSTER_CLOSE); /* end of stream or error */
	size_t n = (size_t)m, off = 0;
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
		if (!respond(keep))
			return WCLUSTER_CLOSE;
		if (!keep)
			return flush(WCLUSTER_CLOSE);
		off += req.size;
	}
	if (off == n)
		return flush(WCLUSTER_KEEP);
	if (n - off == sizeof(in)) {
		APPEND_LIT("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
		return flush(WCLUSTER_CLOSE);
	}
	/* Answer what is complete, push the incomplete rest back: the next call,
	 * when more arrives, reads it first. */
	if (wcluster_unread(in + off, n - off) < 0)
		return flush(WCLUSTER_CLOSE);
	return flush(WCLUSTER_KEEP);
}

WCLUSTER_HANDLER(serve)
