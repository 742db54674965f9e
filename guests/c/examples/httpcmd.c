/*
 * httpcmd: a plain WASI command that answers one HTTP request: it reads
 * stdin (the connection) to the end of the request head, writes a
 * response to stdout (the connection) and exits, which closes it. The
 * benchmark of commands (bench/commands.sh) serves it.
 */
#include <errno.h>
#include <unistd.h>

/* ends reports whether the head's last bytes end it (CRLF CRLF). */
static int ends(const char *head, size_t len)
{
	return len >= 4 && head[len - 4] == '\r' && head[len - 3] == '\n' &&
	       head[len - 2] == '\r' && head[len - 1] == '\n';
}

static const char response[] =
	"HTTP/1.1 200 OK\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 12\r\n"
	"Connection: close\r\n"
	"\r\n"
	"hello world\n";

int main(void)
{
	char head[8192];
	size_t len = 0;
	for (;;) {
		if (len == sizeof(head))
			return 1; /* a head this long is not served */
		ssize_t n = read(0, head + len, sizeof(head) - len);
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		len += (size_t)n;
		/* A client sends its head and waits: the end is at the end. */
		if (ends(head, len))
			break;
	}
	for (size_t off = 0; off < sizeof(response) - 1;) {
		ssize_t w = write(1, response + off, sizeof(response) - 1 - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		off += (size_t)w;
	}
	return 0;
}
