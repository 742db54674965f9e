/*
 * cat: a plain WASI command handler. It copies stdin (the connection) to
 * stdout (the connection) until end of stream and exits; it uses no wcluster
 * import, so any WASI program written this way is a handler.
 */
#include <errno.h>
#include <unistd.h>

static char buf[64 << 10];

int main(void)
{
	for (;;) {
		ssize_t n = read(0, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(1, buf + off, (size_t)(n - off));
			if (w < 0) {
				if (errno == EINTR)
					continue;
				return 1;
			}
			off += w;
		}
	}
}
