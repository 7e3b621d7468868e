# aiqueue: `make run` starts the server on a private Postgres with the fal
# simulator; `make test` runs everything CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
export GOTOOLCHAIN := local
TS_CLIENT := clients/typescript
REDOCLY := tools/redocly
WEB := web

.PHONY: all build run test vet lint unit fuzz test-browser openapi openapi-check openapi-lint redocly-deps web web-deps web-check web-vendor bench drills fmt clean gen ts-deps ts-check ts-test

all: build

build:
	$(GO) build -o $(BIN)/server ./cmd/server
	$(GO) build -o $(BIN)/falsim ./cmd/falsim

## run: the server on a private Postgres under .data/postgres (unless
## DATABASE_URL is set) with the built-in fal simulator (unless a fal key is set).
run: build
	$(BIN)/server serve --demo

## test: vet, lint, the committed OpenAPI document and TypeScript types, every
## Go test with the race detector, the fuzz tests briefly, the TypeScript client
## against a live server, and the River UI browser test.
test: vet lint openapi-check openapi-lint ts-check web-check unit fuzz ts-test test-browser

vet:
	$(GO) vet ./...

$(GOLANGCI_LINT):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $(GOLANGCI_LINT)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

## fuzz: the fuzz tests (submit body, Authorization header) for FUZZTIME each,
## on top of their committed seed corpora (api/testdata/fuzz); a failing input
## is written there. `make fuzz FUZZTIME=10m` for a real run. The default is a
## count of executions, not a duration: Go 1.26's fuzzing engine can fail a
## duration-bounded run with a bare "context deadline exceeded" at its end on a
## loaded machine (golang/go#75804, fixed in Go 1.27; seen in make test here).
FUZZTIME ?= 60000x
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzSubmitBody$$' -fuzztime=$(FUZZTIME) ./api
	$(GO) test -run='^$$' -fuzz='^FuzzAuthorization$$' -fuzztime=$(FUZZTIME) ./api

## test-browser: River UI, and /playground (across origins, with CORS) and
## /docs (network blocked), in Debian's chromium (playwright-core) against the
## real server; installs chromium and the npm packages when missing.
## Screenshots: riverui/e2e/out/.
test-browser: build
	SERVER_BIN=$(BIN)/server riverui/e2e/run.sh e2e.mjs
	SERVER_BIN=$(BIN)/server riverui/e2e/run.sh playground.mjs

## bench: the load generator against the real server, raw River and pgbench on a
## private Postgres, and against the studio's seed design (bench/seed: Node,
## BullMQ, Redis); prints the table and writes bench/results/<time>.json
## (minutes). bench/setup.sh first installs what is missing (redis-server, wrk,
## node, the seed's npm packages; apt-get as root). BENCH_FLAGS=-smoke for a
## quick check, -profile for pprof files, -scenarios versus-seed for one.
bench: build
	bench/setup.sh
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen bench -server $(BIN)/server -falsim $(BIN)/falsim -results bench/results $(BENCH_FLAGS)

## drills: the fault drills (kill -9, Postgres restart, fal 429/401, SIGTERM),
## each ending with the ledger invariant check (minutes; DRILLS_FLAGS=-smoke).
drills: build
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen drills -server $(BIN)/server -results bench/results $(DRILLS_FLAGS)

## openapi: regenerate the committed openapi.yaml from the server's routes.
openapi:
	$(GO) run ./cmd/server openapi > openapi.yaml

openapi-check:
	@$(GO) run ./cmd/server openapi > $(BIN)/openapi.yaml.tmp 2>/dev/null || (mkdir -p $(BIN) && $(GO) run ./cmd/server openapi > $(BIN)/openapi.yaml.tmp)
	@diff -u openapi.yaml $(BIN)/openapi.yaml.tmp || (echo "openapi.yaml is stale: run 'make openapi' and commit it" && exit 1)

## openapi-lint: Redocly CLI (pinned in tools/redocly) with its recommended
## rules over the committed openapi.yaml; any error or warning fails.
openapi-lint: redocly-deps
	node $(REDOCLY)/lint.mjs openapi.yaml

redocly-deps: $(REDOCLY)/node_modules/.package-lock.json

$(REDOCLY)/node_modules/.package-lock.json: $(REDOCLY)/package-lock.json
	cd $(REDOCLY) && npm ci --no-audit --no-fund --loglevel=error

## gen: regenerate the TypeScript client's types (clients/typescript/src/schema.ts)
## from the committed openapi.yaml (after 'make openapi').
gen: ts-deps
	cd $(TS_CLIENT) && npm run gen

# The client's node_modules, installed from the lockfile (npm ci) when missing
# or older than package-lock.json.
ts-deps: $(TS_CLIENT)/node_modules/.package-lock.json

$(TS_CLIENT)/node_modules/.package-lock.json: $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund

ts-check: ts-deps
	@mkdir -p $(BIN)
	@$(TS_CLIENT)/node_modules/.bin/openapi-typescript openapi.yaml -o $(BIN)/schema.ts.tmp >/dev/null
	@diff -u $(TS_CLIENT)/src/schema.ts $(BIN)/schema.ts.tmp || (echo "$(TS_CLIENT)/src/schema.ts is stale: run 'make gen' and commit it" && exit 1)

## ts-test: build the TypeScript client and run its tests against a server it
## starts, and install its packed tarball into a fresh app with its own React.
ts-test: ts-deps
	cd $(TS_CLIENT) && npm test

## web: rebuild the committed playground bundle (web/static/playground/playground.js)
## from web/src and the TypeScript client, with the pinned esbuild (web/package.json).
web: web-deps ts-deps
	cd $(WEB) && npm run build

web-deps: $(WEB)/node_modules/.package-lock.json

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error

## web-check: the committed playground bundle is what make web builds.
web-check: web-deps ts-deps
	@mkdir -p $(BIN)
	@cd $(WEB) && ./node_modules/.bin/tsc -p tsconfig.json && node build.mjs $(BIN)/playground.js.tmp
	@diff -q $(WEB)/static/playground/playground.js $(BIN)/playground.js.tmp >/dev/null || (echo "$(WEB)/static/playground/playground.js is stale: run 'make web' and commit it" && exit 1)

## web-vendor: re-vendor the /docs renderer (RapiDoc, pinned in web/vendor-rapidoc.sh).
web-vendor:
	$(WEB)/vendor-rapidoc.sh

fmt:
	gofmt -w .

clean:
	rm -rf $(BIN)
