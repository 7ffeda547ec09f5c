# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: venv demo test test-fast lint results bench-headroom bench-worldgen clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# Reuse a suitable torch if one is importable; otherwise take the pinned CPU wheel.
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]) >= (2, 9) else 1)" 2>/dev/null \
		|| $(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[all]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/blendrank demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/python -m pytest -q -m "not soak" tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed and not soak" tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples

# Reruns the headline benchmarks (about an hour on 2 cores) and rewrites their tables in docs/benchmarks.md.
results: $(STAMP)
	$(BIN)/python benchmarks/results.py

bench-headroom: $(STAMP)
	$(BIN)/python benchmarks/world_headroom.py

bench-worldgen: $(STAMP)
	$(BIN)/python benchmarks/world_generate_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info
