/*
 * An http-wasm handler in C (sdk/http_handler.h): /api/... goes on to the
 * host's next handler (with wcluster, the --upstream) with an X-Guest
 * header, every other request is answered "hello from C"; every response
 * carries X-Powered-By.
 */
#include "http_handler.h"

static char uri[2048];

static int handle(uint32_t *ctx) {
	(void)ctx;
	hh_set_header(HH_RESPONSE_HEADERS, "X-Powered-By", "wcluster-c");
	uint32_t n = hh_get_uri(uri, sizeof uri);
	if (n <= sizeof uri && n >= 4 && memcmp(uri, "/api", 4) == 0) {
		hh_set_header(HH_REQUEST_HEADERS, "X-Guest", "c");
		return 1; /* next */
	}
	hh_set_header(HH_RESPONSE_HEADERS, "Content-Type", "text/plain");
	hh_write(HH_RESPONSE_BODY, "hello from C");
	return 0;
}

HTTP_HANDLER(handle)
