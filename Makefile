# Set-up and entry points. `make run` and `make test` do everything on a fresh machine:
# create .venv, install the pinned project, then run the pipeline or the checks.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
# Data: empty MIRROR downloads from the pinned upstreams; a folder copies from a local mirror.
MIRROR ?=
# VGG19 notop weights (.h5); empty uses Keras' cache / download.
WEIGHTS ?=
# Where tests find the real mirror and weights (data/ and weights/ below it).
SHARED ?= $(abspath ../shared)
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: install install-slurm run test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The SLURM executor plugin (profiles/slurm), an optional extra; `make test` needs it.
$(BIN)/.installed-slurm: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm]'
	touch $@

install-slurm: $(BIN)/.installed-slurm

# Extra snakemake arguments, e.g. SMK_ARGS="--configfile tests/config/smoke.yaml".
SMK_ARGS ?=
# Passed as given (relative to the checkout), so that `make run` and the README's by-hand
# snakemake command give the rules the same params and one does not rerun the other's jobs.
RUN_CONFIG := $(strip $(if $(MIRROR),mirror=$(MIRROR)) \
	$(if $(WEIGHTS),pretrained_weights=$(WEIGHTS)))

# The main job: raw X-rays to report figures.
run: install
	PATH=$(abspath $(BIN)):$$PATH snakemake --cores $(CORES) $(SMK_ARGS) \
		$(if $(RUN_CONFIG),--config $(RUN_CONFIG))

lint: install
	PATH=$(abspath $(BIN)):$$PATH sh -c 'ruff check . && ruff format --check . && snakefmt --check Snakefile rules && snakemake --lint && python -m cxr.dag write --check'

# Lint, then every test (unit and end-to-end on the real mirror in $(SHARED); the SLURM test
# submits through the plugin, hence install-slurm).
test: lint install-slurm
	PATH=$(abspath $(BIN)):$$PATH CXR_SHARED=$(SHARED) python -m pytest -ra

format: install
	$(BIN)/ruff format . && $(BIN)/snakefmt Snakefile rules && $(BIN)/python -m cxr.dag write

clean:
	rm -rf data models reports logs benchmarks .snakemake
