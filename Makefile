# nftdns — see README.md. `make demo` and `make test` need root (network
# namespaces); everything they need is installed on first use.
GO          ?= go
BIN         := bin/nftdns
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
PKGS_FMT    := cmd nft rules integration

.PHONY: all build deps test unit lint demo bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/nftdns

# Debian packages the namespace tests and the demo use, only when missing.
deps:
	@missing=""; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v dig >/dev/null || missing="$$missing dnsutils"; \
	command -v ip  >/dev/null || missing="$$missing iproute2"; \
	command -v ethtool >/dev/null || missing="$$missing ethtool"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(GO) mod download

# Unit tests and the namespace integration tests (root; skipped otherwise).
test: deps build
	$(GO) test -count=1 -timeout 30m ./...

# Unit tests only: no root, no kernel.
unit:
	$(GO) test -count=1 ./rules/... ./cmd/...

lint:
	@out="$$(gofmt -l $(PKGS_FMT))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

demo: deps build
	$(GO) run ./integration/demo -bin $(BIN)

# The benchmark (root): nftdns against no filter, the classic iptables
# ruleset and nft -f; results in $${BENCH_OUT:-bench-results}/. BENCH=quick
# runs a tiny version in under 2 minutes.
bench: build
	$(GO) run ./integration/bench

fuzz:
	$(GO) test ./rules -run XXX -fuzz FuzzCompiledLookup -fuzztime 60s
	$(GO) test ./rules -run XXX -fuzz FuzzParseList -fuzztime 60s
	$(GO) test ./rules -run XXX -fuzz FuzzWire -fuzztime 30s
	$(GO) test ./cmd/nftdns/cli -run XXX -fuzz FuzzConfig -fuzztime 60s

clean:
	rm -rf bin
