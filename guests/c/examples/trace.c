/*
 * trace: a line handler that traces each request with printf and answers
 * through conn_write. The client sends one line; the handler answers
 * "you said: LINE\n" and closes. Two lines mean more:
 *
 *   flush   fflush(stdout): the traces held in stdio's buffer go out now
 *   trap    trap in fail_here() (the host logs the wasm stack)
 *
 * The traces have no newline, so C's stdio holds them in its buffer across
 * calls and connections until the buffer fills. An ABI handler's stdout is
 * the worker's log, never the connection (abi/README.md), so a trace
 * flushed during one client's call cannot reach that client. Built without
 * --strip-all: the name section lets a trap's stack name fail_here.
 */
#include <stdio.h>
#include <string.h>

#include "wcluster.h"

static char line[1024];

__attribute__((noinline)) static void fail_here(void)
{
	__builtin_trap();
}

static int32_t serve(int32_t flags)
{
	(void)flags;
	size_t n = 0;
	while (n < sizeof(line) - 1 && memchr(line, '\n', n) == NULL) {
		int32_t r = wcluster_read(line + n, sizeof(line) - 1 - n);
		if (r <= 0)
			return WCLUSTER_CLOSE;
		n += (size_t)r;
	}
	char *end = memchr(line, '\n', n);
	if (end == NULL)
		return WCLUSTER_CLOSE; /* a line too long */
	*end = '\0';
	if (strcmp(line, "trap") == 0)
		fail_here();
	if (strcmp(line, "flush") == 0)
		fflush(stdout);
	else
		printf("trace: %s; ", line); /* no newline: stays in stdio's buffer */
	wcluster_write_str("you said: ");
	wcluster_write_str(line);
	wcluster_write_str("\n");
	return WCLUSTER_CLOSE;
}

WCLUSTER_HANDLER(serve)
