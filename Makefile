# aiqueue: `make run` starts the server on a private Postgres with the fal
# simulator; `make test` runs everything CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
export GOTOOLCHAIN := local

.PHONY: all build run test vet lint unit openapi openapi-check bench drills fmt clean

all: build

build:
	$(GO) build -o $(BIN)/server ./cmd/server
	$(GO) build -o $(BIN)/falsim ./cmd/falsim

## run: the server on a private Postgres under .data/postgres (unless
## DATABASE_URL is set) with the built-in fal simulator (unless a fal key is set).
run: build
	$(BIN)/server serve --demo

## test: vet, lint, the committed OpenAPI document, and every test with the race detector.
test: vet lint openapi-check unit

vet:
	$(GO) vet ./...

$(GOLANGCI_LINT):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $(GOLANGCI_LINT)

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

## bench: the load generator against the real server, raw River and pgbench on a
## private Postgres; prints the table and writes bench/results/<time>.json
## (minutes). BENCH_FLAGS=-smoke for a quick check, -profile for pprof files.
bench: build
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen bench -server $(BIN)/server -results bench/results $(BENCH_FLAGS)

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

fmt:
	gofmt -w .

clean:
	rm -rf $(BIN)
