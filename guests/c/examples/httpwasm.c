// An http-wasm handler in C (import module http_handler; see
// abi/README.md): /api/... goes on to the upstream with an X-Guest header,
// every other request is answered "hello from C"; every response carries
// X-Powered-By. No SDK: the ABI is a few imports.
#include <stdint.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("http_handler"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("get_uri") uint32_t get_uri(char *buf, uint32_t limit);
IMPORT("set_header_value") void set_header_value(uint32_t kind, const char *name, uint32_t name_len,
						  const char *value, uint32_t value_len);
IMPORT("write_body") void write_body(uint32_t kind, const char *buf, uint32_t len);

enum { REQUEST = 0, RESPONSE = 1 };

static void set_header(uint32_t kind, const char *name, const char *value) {
	set_header_value(kind, name, strlen(name), value, strlen(value));
}

static char uri[2048];

EXPORT("handle_request") uint64_t handle_request(void) {
	set_header(RESPONSE, "X-Powered-By", "wcluster-c");
	uint32_t n = get_uri(uri, sizeof uri);
	if (n <= sizeof uri && n >= 4 && memcmp(uri, "/api", 4) == 0) {
		set_header(REQUEST, "X-Guest", "c");
		return 1; // next
	}
	set_header(RESPONSE, "Content-Type", "text/plain");
	static const char body[] = "hello from C";
	write_body(RESPONSE, body, sizeof body - 1);
	return 0;
}

EXPORT("handle_response") void handle_response(uint32_t req_ctx, uint32_t is_error) {
	(void)req_ctx;
	(void)is_error;
}
