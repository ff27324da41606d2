# Two commands on a fresh machine: `make serve` starts the service, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench redis postgres chromium nginx compose

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Redis backs the job queue and the integration tests; start a local one if none answers.
redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --port 6379 --save "" --appendonly no

# The API on http://127.0.0.1:8000 with a training and a heatmap worker (and Redis if none answers).
# Only this machine can reach it; `make serve HOST=0.0.0.0` opens it to the network.
HOST ?= 127.0.0.1
serve: install
	$(BIN)/trashcam serve --host $(HOST) --port 8000

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The stores' tests run on PostgreSQL too, in databases of their own on the local server; start it if it
# is installed and not running.
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || service postgresql start

# The replicas' test puts Debian's nginx in front of two API processes; install it if it is missing.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light)

# The deployment's tests validate docker-compose.yml; install Debian's docker-compose if no compose is here.
compose:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose)

# The web pages' tests drive Debian's Chromium; install it if it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

test: lint redis postgres chromium nginx compose
	$(BIN)/pytest

# The speed benchmarks of docs/PERFORMANCE.md (about half an hour on 2 CPU cores). The shipped model's
# test photos come from TrashNet (shipped) and waste-extra-144.tar.gz, looked for in the data root.
DATA_ROOT ?= $(or $(TRASHCAM_DATA_ROOT),var/data)
bench: install
	$(BIN)/python -m bench.cam_speed --checkpoint weights/se_resnet50/model.pt
	$(BIN)/python -m bench.service_load --checkpoint weights/se_resnet50/model.pt \
		--manifest weights/se_resnet50/manifest.json --data trashnet=data/trashnet-112.tar.gz \
		--data extra=$(DATA_ROOT)/waste-extra-144.tar.gz
	$(BIN)/python -m bench.training_speed --data data/trashnet-112.tar.gz
