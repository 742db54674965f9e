/*
 * http_handler.h: header-only C SDK for the http-wasm HTTP handler ABI
 * (import module "http_handler"), as wcluster, Traefik and Dapr host it.
 * The host speaks HTTP; the guest handles one request at a time through
 * these imports and exports handle_request (and handle_response).
 *
 * Build as a reactor:
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor \
 *         -I guests/c/sdk -o handler.wasm handler.c
 */
#ifndef HTTP_HANDLER_H
#define HTTP_HANDLER_H

#include <stdint.h>
#include <string.h>

#define HTTP_HANDLER_IMPORT(name) __attribute__((import_module("http_handler"), import_name(#name)))

/* Header kinds and body kinds. */
enum { HH_REQUEST_HEADERS = 0, HH_RESPONSE_HEADERS = 1, HH_REQUEST_TRAILERS = 2, HH_RESPONSE_TRAILERS = 3 };
enum { HH_REQUEST_BODY = 0, HH_RESPONSE_BODY = 1 };
/* Features for hh_enable_features. */
enum { HH_BUFFER_REQUEST = 1, HH_BUFFER_RESPONSE = 2, HH_TRAILERS = 4 };
/* Log levels. */
enum { HH_LOG_DEBUG = -1, HH_LOG_INFO = 0, HH_LOG_WARN = 1, HH_LOG_ERROR = 2 };

HTTP_HANDLER_IMPORT(enable_features) uint32_t hh_enable_features(uint32_t features);
HTTP_HANDLER_IMPORT(get_config) uint32_t hh_get_config(char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(log) void hh_log(int32_t level, const char *msg, uint32_t len);
HTTP_HANDLER_IMPORT(log_enabled) uint32_t hh_log_enabled(int32_t level);
HTTP_HANDLER_IMPORT(get_method) uint32_t hh_get_method(char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(set_method) void hh_set_method(const char *m, uint32_t len);
HTTP_HANDLER_IMPORT(get_uri) uint32_t hh_get_uri(char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(set_uri) void hh_set_uri(const char *uri, uint32_t len);
HTTP_HANDLER_IMPORT(get_protocol_version) uint32_t hh_get_protocol_version(char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(get_source_addr) uint32_t hh_get_source_addr(char *buf, uint32_t limit);
/* Results: count << 32 | length of the NUL-terminated names or values. */
HTTP_HANDLER_IMPORT(get_header_names) uint64_t hh_get_header_names(uint32_t kind, char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(get_header_values)
uint64_t hh_get_header_values(uint32_t kind, const char *name, uint32_t name_len, char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(set_header_value)
void hh_set_header_value(uint32_t kind, const char *name, uint32_t name_len, const char *value, uint32_t value_len);
HTTP_HANDLER_IMPORT(add_header_value)
void hh_add_header_value(uint32_t kind, const char *name, uint32_t name_len, const char *value, uint32_t value_len);
HTTP_HANDLER_IMPORT(remove_header) void hh_remove_header(uint32_t kind, const char *name, uint32_t name_len);
/* Result: eof << 32 | length read. */
HTTP_HANDLER_IMPORT(read_body) uint64_t hh_read_body(uint32_t kind, char *buf, uint32_t limit);
HTTP_HANDLER_IMPORT(write_body) void hh_write_body(uint32_t kind, const char *buf, uint32_t len);
HTTP_HANDLER_IMPORT(get_status_code) uint32_t hh_get_status_code(void);
HTTP_HANDLER_IMPORT(set_status_code) void hh_set_status_code(uint32_t code);

/* Helpers for NUL-terminated strings. */
static inline void hh_set_header(uint32_t kind, const char *name, const char *value) {
	hh_set_header_value(kind, name, strlen(name), value, strlen(value));
}
static inline void hh_write(uint32_t kind, const char *s) { hh_write_body(kind, s, strlen(s)); }
static inline void hh_logs(int32_t level, const char *msg) { hh_log(level, msg, strlen(msg)); }

/*
 * HTTP_HANDLERS(fn, resp_fn) exports handle_request calling
 *   int fn(uint32_t *req_ctx)
 * which returns nonzero to pass the request on to the host's next handler
 * (req_ctx is handed back to resp_fn), and handle_response calling
 *   void resp_fn(uint32_t req_ctx, int is_error)
 * after the next handler. HTTP_HANDLER(fn) is the same with no response
 * handler (hosts expect the export either way).
 */
#define HTTP_HANDLERS(fn, resp_fn)                                                           \
	__attribute__((export_name("handle_request"))) uint64_t handle_request(void) {           \
		uint32_t ctx = 0;                                                                    \
		int next = fn(&ctx);                                                                 \
		return ((uint64_t)ctx << 32) | (next ? 1u : 0u);                                     \
	}                                                                                        \
	__attribute__((export_name("handle_response"))) void handle_response(uint32_t ctx, uint32_t err) { \
		resp_fn(ctx, err != 0);                                                              \
	}
static inline void hh_no_response(uint32_t ctx, int is_error) { (void)ctx; (void)is_error; }
#define HTTP_HANDLER(fn) HTTP_HANDLERS(fn, hh_no_response)

#endif
