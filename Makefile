# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv and
# installs what it needs (CPU torch pinned: an unpinned torch pulls a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
# ruff pinned: every machine reports the same lint findings
RUFF := ruff==0.17.6
SEED ?= 0
DEMO_DIR ?= runs/demo

.PHONY: demo tune-demo demo-ma2mi test lint install install-test install-chromium bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Headless Chromium (Debian's package) for tests/test_reproduce.py's screenshot test of a
# study's report.html, installed by `make test`; without it (no root, no apt) that one
# test skips, saying why.
install-chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: tests/test_reproduce.py's HTML test will skip"

$(VENV)/.installed-demo: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/lightman demo --config configs/demo/demo.yaml --out $(DEMO_DIR) seed=$(SEED)

# A small Ray Tune + Optuna search of LightmanNet on a generated CASME II + CK+ index
# (6 trials, 2 at a time); the study persists in runs/tune-demo/lightman/study.db.
TUNE_DIR ?= runs/tune-demo
tune-demo: $(VENV)/.installed
	$(BIN)/lightman synth --out $(TUNE_DIR)/synth "datasets=[casme2,ckplus]" seed=$(SEED)
	$(BIN)/lightman ingest casme2 $(TUNE_DIR)/synth/CASME2 --out $(TUNE_DIR)/index --replace label_scheme=five preprocess.size=32
	$(BIN)/lightman ingest ckplus $(TUNE_DIR)/synth/CK+ --out $(TUNE_DIR)/index --replace preprocess.size=32
	$(BIN)/lightman tune --config configs/tune/demo.yaml \
		--space tune_spaces/lightman.yaml --trials 6 --out $(TUNE_DIR)/lightman data.index=$(TUNE_DIR)/index seed=$(SEED)

# MA2MI pre-training of a MIACNet encoder on the demo's macro clips (needs `make demo` first)
demo-ma2mi: $(VENV)/.installed
	$(BIN)/lightman pretrain --config configs/pretrain/ma2mi.yaml --out runs/ma2mi seed=$(SEED)

# Two pytest workers (pytest-xdist), whole files each, the longest files first (conftest.py):
# much of the suite waits on Ray and HTTP start-ups, which overlap. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test install-chromium
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q \
		-n $(TEST_WORKERS) --dist loadfile tests

# The documentation site (mkdocs.yml, sources in docs/) built with --strict, so a broken
# link or anchor, or a page left out of the nav, fails; the site lands in runs/site.
# NO_MKDOCS_2_WARNING: Material's end-of-life banner, printed on every build, hides the
# build's own warnings.
.PHONY: docs
$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir runs/site

$(VENV)/.installed-lint: | $(BIN)/python
	$(BIN)/pip install -q '$(RUFF)'
	touch $@

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/pip install -q -e '.[test,bench]' $(TORCH_CPU)
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/meta_step.py --meta-batch 1 --mem-limit-gb 20

clean:
	rm -rf runs .pytest_cache
