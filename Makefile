# Builds every guest into out/guests; `go test ./...` uses them when
# WCLUSTER_GUESTS points there (the tests build the Go guests themselves).
OUT ?= $(CURDIR)/out/guests
GOWASM = GOOS=wasip1 GOARCH=wasm go build -trimpath -buildvcs=false -ldflags='-s -w'
# Keeps the name section (no -s): the tests read function names in the faults guest's trap stacks.
GOWASM_NAMED = GOOS=wasip1 GOARCH=wasm go build -trimpath -buildvcs=false -ldflags='-w'

# `make test` is the one test command: on a fresh machine (as root) it first
# installs the packages the guests' toolchains and the tests need.
.PHONY: deps guests go-guests embedded test
deps:
	@scripts/deps.sh

guests: go-guests
	@mkdir -p $(OUT)
	@for lang in c wat rust assemblyscript zig; do \
		if [ -x guests/$$lang/build.sh ]; then guests/$$lang/build.sh $(OUT) || exit 1; fi; \
	done

go-guests:
	@mkdir -p $(OUT)
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-hello.wasm ./guests/go/hello
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-echo.wasm ./guests/go/echo
	$(GOWASM_NAMED) -buildmode=c-shared -o $(OUT)/go-faults.wasm ./guests/go/faults
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-spin.wasm ./guests/go/spin
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-probe.wasm ./guests/go/probe
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-greet.wasm ./guests/go/greet
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-httpwasm.wasm ./guests/go/hwhello
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-waf.wasm ./guests/go/waf
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-kv.wasm ./guests/go/kv
	$(GOWASM) -buildmode=c-shared -o $(OUT)/go-httpkv.wasm ./guests/go/httpkv
	$(GOWASM) -o $(OUT)/go-cat.wasm ./guests/go/catcmd
	$(GOWASM) -o $(OUT)/go-httpcmd.wasm ./guests/go/httpcmd

# The default handler embedded in the binary: guests/c/examples/hello.c, as
# guests/c/build.sh builds it (a test checks it is current).
embedded:
	@mkdir -p $(OUT)
	guests/c/build.sh $(OUT)
	cp $(OUT)/c-hello.wasm guests/embedded/hello.wasm

# tests/deploy is a module of its own (kustomize and the Kubernetes API types stay out of go.mod).
test: deps guests
	WCLUSTER_GUESTS=$(OUT) go test -race -count=1 -parallel 3 -timeout 30m ./...
	cd tests/deploy && WCLUSTER_GUESTS=$(OUT) go test -race -count=1 -timeout 30m ./...
