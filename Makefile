# egressd — build, demo and test entry points. README's two commands are
# `make demo` (a filtered sandbox) and `make test` (every test, privileged
# ones included when run as root). Both install what they need.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Whole-suite bound: CI allows 90 minutes for everything.
TEST_TIMEOUT ?= 60m

.PHONY: all deps build lint test unit demo fuzz bench clean

all: build

deps:
	@scripts/deps.sh

build:
	$(GO) build -o bin/ ./cmd/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum not tidy: run go mod tidy"; exit 1; }

# Every test. As root this includes the privileged tests (network namespaces,
# iptables, runc) and the e2e suite; as non-root those skip with a reason.
# -p 1: the sandbox and e2e packages both start real sandboxes and check,
# at their end, that the machine holds none they did not remove; run side by
# side, each would see the other's live ones.
test: deps lint
	$(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only (no root needed).
unit:
	$(GO) test -count=1 -short ./...

demo: deps build
	@scripts/demo.sh

# Short fuzz runs of every fuzz target (FUZZTIME each).
FUZZTIME ?= 30s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin
