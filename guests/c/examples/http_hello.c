/*
 * http_hello: an http-wasm handler (sdk/http_handler.h). It answers
 * "hello world" for every path except those under /next/, which go on to the
 * host's next handler with the prefix stripped.
 */
#include "http_handler.h"

static char uri[2048];

static int handle(uint32_t *ctx) {
	(void)ctx;
	uint32_t n = hh_get_uri(uri, sizeof uri);
	if (n <= sizeof uri && n >= 6 && memcmp(uri, "/next/", 6) == 0) {
		hh_set_uri(uri + 5, n - 5);
		hh_set_header(HH_RESPONSE_HEADERS, "X-Http-Hello", "passed");
		return 1;
	}
	hh_set_header(HH_RESPONSE_HEADERS, "Content-Type", "text/plain; charset=utf-8");
	hh_write(HH_RESPONSE_BODY, "hello world\n");
	return 0;
}

HTTP_HANDLER(handle)
