/*
 * echo: a raw echo handler. Every byte read is written back until the peer
 * half-closes (conn_read returns 0) or the read fails; then the handler
 * half-closes too and returns CLOSE.
 */
#include "wcluster.h"

static char buf[64 << 10];

static int32_t serve(int32_t flags)
{
	(void)flags;
	for (;;) {
		int32_t n = wcluster_read(buf, sizeof(buf));
		if (n <= 0)
			break; /* 0: end of stream; < 0: error */
		if (wcluster_write_all(buf, (size_t)n) < 0)
			return WCLUSTER_CLOSE;
	}
	wcluster_close_write();
	return WCLUSTER_CLOSE;
}

WCLUSTER_HANDLER(serve)
