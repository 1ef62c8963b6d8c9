# holdfast. `make demo` shows the failover story; `make test` runs every test
# (integration tests need root: they build network namespaces).

GO      ?= go
BIN     ?= bin/holdfast
FUZZTIME ?= 30s

.PHONY: all build demo test unit integration lint fuzz bench clean install

PREFIX  ?= /usr/local
DESTDIR ?=

all: build

build:
	$(GO) build -o $(BIN) ./cmd/holdfast

# The failover story in one command: a namespace lab, a load, a failover and
# a failback, with holdfast and with a plain NAT director (--recovery=off).
demo: build
	./$(BIN) lab demo

# The one test command: lint, then unit and integration tests, race
# detector on.
test: lint
	$(GO) test -race -count=1 -timeout 30m ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

integration:
	$(GO) test -race -count=1 -timeout 30m -v ./integration/...

# gofmt, vet, a tidy go.mod, staticcheck and deadcode (pinned; fetched from
# the module proxy on first use).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
DEADCODE    ?= golang.org/x/tools/cmd/deadcode@v0.52.0

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt: $$fmt"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(GO) run $(STATICCHECK) ./...
	@dead=$$($(GO) run $(DEADCODE) -test ./...); if [ -n "$$dead" ]; then echo "$$dead"; exit 1; fi

fuzz:
	$(GO) test -run XXX -fuzz FuzzHandle -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run XXX -fuzz FuzzRewriteRoundTrip -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run XXX -fuzz FuzzTranslateRoundTrip -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run XXX -fuzz FuzzParseReal -fuzztime $(FUZZTIME) ./balancer/

# Microbenchmarks, then holdfast side by side with the kernel's NAT and
# HAProxy (IPv4 and IPv6 rows), and the recovery storm (issue 6). The
# second part needs root (a namespace lab) and iperf3, wrk, haproxy,
# nginx-light, iptables, nft; it takes about 8 minutes, prints a table and
# writes bench/results.json.
# BENCHFLAGS passes flags, e.g. BENCHFLAGS="-rows wrk,storm -runs 1".
bench: build
	$(GO) test -run XXX -bench . -benchmem ./nat/ ./balancer/
	$(GO) run ./integration/bench -holdfast $(BIN) $(BENCHFLAGS)

# The binary, the systemd unit, an example configuration (kept if one is
# there already), and the man page and shell completions the binary prints
# (`holdfast man`, `holdfast completion SHELL`): then edit /etc/holdfast/*,
# `systemctl enable --now holdfast`.
MAN8DIR  = $(DESTDIR)$(PREFIX)/share/man/man8
BASHCOMP = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHCOMP  = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHCOMP = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/holdfast
	install -d -m 0755 $(MAN8DIR) $(BASHCOMP) $(ZSHCOMP) $(FISHCOMP)
	$(abspath $(BIN)) man > $(MAN8DIR)/holdfast.8
	$(abspath $(BIN)) completion bash > $(BASHCOMP)/holdfast
	$(abspath $(BIN)) completion zsh > $(ZSHCOMP)/_holdfast
	$(abspath $(BIN)) completion fish > $(FISHCOMP)/holdfast.fish
	chmod 0644 $(MAN8DIR)/holdfast.8 $(BASHCOMP)/holdfast $(ZSHCOMP)/_holdfast $(FISHCOMP)/holdfast.fish
	install -D -m 0644 dist/holdfast.service $(DESTDIR)/lib/systemd/system/holdfast.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/holdfast/README.md
	install -d -m 0755 $(DESTDIR)/etc/holdfast
	test -e $(DESTDIR)/etc/holdfast/holdfast.env || install -m 0644 dist/holdfast.env $(DESTDIR)/etc/holdfast/holdfast.env
	test -e $(DESTDIR)/etc/holdfast/services.json || install -m 0644 dist/services.json $(DESTDIR)/etc/holdfast/services.json

clean:
	rm -rf bin
