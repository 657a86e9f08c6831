# fusion — two commands: `make run` (the main job) and `make test`. Both set themselves up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FUSION := $(VENV)/bin/fusion
STAMP := $(VENV)/.installed
DATAROOT ?= data/synthetic
VERSION ?= v1.0-mini
PRESET ?= mini
SEED ?= 0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup world run browser test test-slow app lint format heldout bench clean

setup: $(STAMP)

# One pip resolver run for every dependency: nuscenes-devkit pins numpy<2 and Shapely~=2.0, and a later
# separate install can silently break that. torch==2.13.0 resolves to the CPU wheel on this machine's disk.
$(STAMP): pyproject.toml requirements/constraints.txt
	@ldconfig -p | grep -q libusb-1.0 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libusb-1.0-0; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -c requirements/constraints.txt -e '.[dev]'
	@# pip byte-compiles on one core; compileall on every core takes about two thirds of the time (a few files that
	@# only newer Pythons parse fail to compile, as they do silently under pip)
	@$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	@touch $(STAMP)

$(DATAROOT)/$(VERSION)/scene.json: | $(STAMP)
	$(FUSION) synth --out $(DATAROOT) --preset $(PRESET) --seed $(SEED)

# The world alone: generate it if missing and print its summary.
world: $(STAMP) $(DATAROOT)/$(VERSION)/scene.json
	$(FUSION) info --dataroot $(DATAROOT) --version $(VERSION)

# The main job: world (if missing) and its summary -> fit -> predict fused / LiDAR-only / camera-only -> evaluate.
# Results in outputs/latest/ (see docs/training.md). Interrupted runs resume where they stopped.
# Its clock starts when make does (set-up and world count): when they leave less than the fits' budgets and the steps
# around them need, `--time-limit` shortens the fits' budgets; `RUN_LIMIT=` (empty) runs them in full.
STARTED := $(shell date +%s)
RUN_LIMIT ?= 14:50
run: $(STAMP) $(DATAROOT)/$(VERSION)/scene.json
	$(FUSION) run --config configs/synthetic_cpu.yaml --dataroot $(DATAROOT) \
		$(if $(RUN_LIMIT),--time-limit $(RUN_LIMIT) --started-at $(STARTED))

# Headless Chromium for the app's browser test (Python playwright drives /usr/bin/chromium; no browser download).
# Only the tests need it: `make run` on a new machine does not wait for it.
browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the app's browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The Gradio app on http://127.0.0.1:7860 (the synthetic world and the checkpoint `make run` leaves; see docs/app.md).
app: $(STAMP)
	$(PY) app.py --port 7860

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The latest run's checkpoint fused and LiDAR-only on a held-out world (seed 1, generated on first use: ~1.5 min, 330 MB):
# 160 unseen samples instead of mini_val's 40 (docs/benchmarks.md, **Fused against LiDAR-only on a held-out world**).
heldout: $(STAMP)
	$(PY) benchmarks/heldout.py --runs outputs/latest

bench: $(STAMP) $(DATAROOT)/$(VERSION)/scene.json
	$(PY) benchmarks/synth.py
	$(PY) benchmarks/loader.py --dataroot $(DATAROOT)
	$(PY) benchmarks/model.py --dataroot $(DATAROOT)
	$(PY) benchmarks/evaluate.py --mini $(DATAROOT) --work outputs/eval_bench

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
