package host

import (
	"fmt"
	"slices"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// The http-wasm handler ABI (the "HTTP handler ABI" of the http-wasm
// project, spoken by Traefik plugins and Dapr middleware): the guest imports
// host functions from httpModule and exports handle_request and
// handle_response. The host owns the HTTP protocol; the guest sees a request
// and shapes the response through these functions.
const (
	httpModule         = "http_handler"
	httpHandleRequest  = "handle_request"
	httpHandleResponse = "handle_response"
)

// http-wasm feature bits, for enable_features.
const (
	featureBufferRequest  = 1 << 0
	featureBufferResponse = 1 << 1
	featureTrailers       = 1 << 2
	httpFeatures          = featureBufferRequest | featureBufferResponse | featureTrailers
)

// HTTPFeatureNames names the feature bits of an http-wasm guest, in bit
// order.
var httpFeatureNames = [...]string{"buffer_request", "buffer_response", "trailers"}

// FeatureNames names the http-wasm features set in f.
func FeatureNames(f uint32) []string {
	var names []string
	for i, n := range httpFeatureNames {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return names
}

// Header and body kinds of the http-wasm ABI.
const (
	kindRequest          = 0
	kindResponse         = 1
	kindRequestTrailers  = 2
	kindResponseTrailers = 3
)

// httpSignatures are the parameter and result types of every host function
// of httpModule.
var httpSignatures = func() map[string][2][]api.ValueType {
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	n := func(k int) []api.ValueType {
		t := make([]api.ValueType, k)
		for i := range t {
			t[i] = i32
		}
		return t
	}
	return map[string][2][]api.ValueType{
		"enable_features":      {n(1), n(1)},
		"get_config":           {n(2), n(1)},
		"log_enabled":          {n(1), n(1)},
		"log":                  {n(3), nil},
		"get_method":           {n(2), n(1)},
		"set_method":           {n(2), nil},
		"get_uri":              {n(2), n(1)},
		"set_uri":              {n(2), nil},
		"get_protocol_version": {n(2), n(1)},
		"get_source_addr":      {n(2), n(1)},
		"get_header_names":     {n(3), {i64}},
		"get_header_values":    {n(5), {i64}},
		"set_header_value":     {n(5), nil},
		"add_header_value":     {n(5), nil},
		"remove_header":        {n(3), nil},
		"read_body":            {n(3), {i64}},
		"write_body":           {n(3), nil},
		"get_status_code":      {nil, n(1)},
		"set_status_code":      {n(1), nil},
	}
}()

// checkHTTPImport checks one import from httpModule against the ABI.
func checkHTTPImport(def api.FunctionDefinition) error {
	_, name, _ := def.Import()
	sig, ok := httpSignatures[name]
	if !ok {
		return fmt.Errorf("imports %s.%s, which the http-wasm handler ABI does not define", httpModule, name)
	}
	if !sameTypes(def.ParamTypes(), sig[0]) || !sameTypes(def.ResultTypes(), sig[1]) {
		return fmt.Errorf("imports %s.%s with signature %s, but the http-wasm handler ABI defines %s",
			httpModule, name, signature(def.ParamTypes(), def.ResultTypes()), signature(sig[0], sig[1]))
	}
	return nil
}

// checkHTTPExports checks what an http-wasm guest must export.
func checkHTTPExports(m wazero.CompiledModule) error {
	exports := m.ExportedFunctions()
	req, ok := exports[httpHandleRequest]
	if !ok {
		return fmt.Errorf("imports from %q but exports no %s: build it with an http-wasm SDK", httpModule, httpHandleRequest)
	}
	if !sameTypes(req.ParamTypes(), nil) || !sameTypes(req.ResultTypes(), []api.ValueType{api.ValueTypeI64}) {
		return fmt.Errorf("exports %s with signature %s, want () -> (i64)",
			httpHandleRequest, signature(req.ParamTypes(), req.ResultTypes()))
	}
	resp, ok := exports[httpHandleResponse]
	if !ok {
		return fmt.Errorf("exports %s but no %s: the http-wasm handler ABI needs both", httpHandleRequest, httpHandleResponse)
	}
	if !sameTypes(resp.ParamTypes(), []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}) || !sameTypes(resp.ResultTypes(), nil) {
		return fmt.Errorf("exports %s with signature %s, want (i32, i32) -> ()",
			httpHandleResponse, signature(resp.ParamTypes(), resp.ResultTypes()))
	}
	if _, ok := m.ExportedMemories()["memory"]; !ok {
		return fmt.Errorf("exports no %q: the host passes buffers through it", "memory")
	}
	return nil
}

// startFunc is the export a new instance runs after instantiation: an
// http-wasm guest built as a command (TinyGo) registers its handlers in
// _start and returns; a reactor has _initialize.
func (h *Handler) startFunc() string {
	if h.info.Kind == KindHTTP {
		if _, ok := h.compiled.ExportedFunctions()["_initialize"]; !ok {
			return "_start"
		}
	}
	return "_initialize"
}

// startErr explains an instance that failed to start: an http-wasm guest
// that reads its configuration while starting may need one.
func (h *Handler) startErr(err error) error {
	if h.info.Kind == KindHTTP && len(h.opts.GuestConfig) == 0 && slices.Contains(h.info.Imports, httpModule+".get_config") {
		return fmt.Errorf("%w (it reads its configuration while starting, and none was given: pass it with --guest-config or the tenant's guest_config)", err)
	}
	return err
}
