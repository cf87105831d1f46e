# egressd — build, demo and test entry points. README's two commands are
# `make demo` (a filtered sandbox) and `make test` (every test, privileged
# ones included when run as root). Both install what they need.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Whole-suite bound: CI allows 90 minutes for everything.
TEST_TIMEOUT ?= 60m

# What --version prints: a tag (git describe) and the commit, "-dirty" when
# the work tree has changes. Override both when building outside a clone
# (the Dockerfile passes them as build arguments).
VERSION ?= $(shell git describe --tags --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell c=$$(git rev-parse --short=12 HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null || c=$$c-dirty; echo $$c; } || echo unknown)
PKG := github.com/egressd/egressd
LDFLAGS := -s -w -X $(PKG)/internal/buildinfo.version=$(VERSION) -X $(PKG)/internal/buildinfo.commit=$(COMMIT)
# Static binaries (no cgo, no libc at run time; the launcher is also every
# sandbox's init, which must need nothing of the sandbox's file system),
# without the build machine's paths: the same flags for bin/, the image and
# the release archives (scripts/release.sh builds with -trimpath -ldflags
# "$LDFLAGS" too).
build release: export CGO_ENABLED := 0
BUILDFLAGS = -trimpath -ldflags '$(LDFLAGS)'
BINDIR ?= bin
PREFIX ?= /usr/local
DESTDIR ?=
DIST ?= dist
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64

.PHONY: all deps build install uninstall release lint test unit demo docs fuzz bench clean

all: build

deps:
	@scripts/deps.sh

build:
	$(GO) build $(BUILDFLAGS) -o $(BINDIR)/ ./cmd/egressd ./cmd/launcher

# Installs the binaries, shell completions and license under
# $(DESTDIR)$(PREFIX); `make uninstall` with the same PREFIX removes them.
install: build
	@scripts/install.sh install "$(BINDIR)" "$(DESTDIR)$(PREFIX)"

uninstall:
	@scripts/install.sh uninstall "$(BINDIR)" "$(DESTDIR)$(PREFIX)"

# Static archives for each of RELEASE_PLATFORMS and their SHA256SUMS, in
# $(DIST)/.
release: build
	@GO="$(GO)" VERSION="$(VERSION)" LDFLAGS="$(LDFLAGS)" DIST="$(DIST)" BINDIR="$(BINDIR)" \
		PLATFORMS="$(RELEASE_PLATFORMS)" scripts/release.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum not tidy: run go mod tidy"; exit 1; }

# Every test. As root this includes the privileged tests (network namespaces,
# iptables, runc) and the e2e suite, switched on by EGRESSD_PRIVILEGED_TESTS=1
# (internal/privtest); as non-root those skip with a reason.
# -p 1: the sandbox and e2e packages both start real sandboxes and check,
# at their end, that the machine holds none they did not remove; run side by
# side, each would see the other's live ones.
test: deps lint
	EGRESSD_PRIVILEGED_TESTS=1 $(GO) test -p 1 -count=1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only: no privileged test runs, even as root (the switch is
# cleared).
unit:
	EGRESSD_PRIVILEGED_TESTS= $(GO) test -count=1 -short ./...

# Regenerate the CLI reference (docs/cli/) from the flag definitions.
docs:
	$(GO) test -count=1 ./cmd/egressd ./cmd/launcher -run TestCLIReferenceIsCurrent -update

demo: deps build
	@scripts/demo.sh

# Short fuzz runs of every fuzz target (FUZZTIME each).
FUZZTIME ?= 30s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf bin $(DIST)
