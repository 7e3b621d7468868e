# aiqueue: `make run` starts the server on a private Postgres with the fal
# simulator; `make test` runs everything CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
export GOTOOLCHAIN := local
TS_CLIENT := clients/typescript

.PHONY: all build run test vet lint unit test-browser openapi openapi-check bench drills fmt clean gen ts-deps ts-check ts-test

all: build

build:
	$(GO) build -o $(BIN)/server ./cmd/server
	$(GO) build -o $(BIN)/falsim ./cmd/falsim

## run: the server on a private Postgres under .data/postgres (unless
## DATABASE_URL is set) with the built-in fal simulator (unless a fal key is set).
run: build
	$(BIN)/server serve --demo

## test: vet, lint, the committed OpenAPI document and TypeScript types, every
## Go test with the race detector, the TypeScript client against a live server,
## and the River UI browser test.
test: vet lint openapi-check ts-check unit ts-test test-browser

vet:
	$(GO) vet ./...

$(GOLANGCI_LINT):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $(GOLANGCI_LINT)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

## test-browser: River UI in Debian's chromium (playwright-core) against the
## real server; installs chromium and the npm packages when missing.
## Screenshots: riverui/e2e/out/.
test-browser: build
	SERVER_BIN=$(BIN)/server riverui/e2e/run.sh

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

## ts-test: build the TypeScript client and run its tests against a server it starts.
ts-test: ts-deps
	cd $(TS_CLIENT) && npm run build && npm test

fmt:
	gofmt -w .

clean:
	rm -rf $(BIN)
