# ftx: the two commands a new user needs.
#   make run    set everything up from nothing and run the quickstart (torch, local runtime)
#   make test   set everything up from nothing and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL := .ftx/models/quickstart-llama
export FTX_HOME ?= $(HOME)/.cache/ftx

.PHONY: setup run test test-full test-images test-gguf snapshots fuzz lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(MODEL)/config.json: | setup
	$(BIN)/ftx init-model --arch llama --size small --out $(MODEL) --force

run: setup $(MODEL)/config.json
	$(BIN)/ftx run recipes/quickstart.yaml --backend torch --force

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest -ra --durations=30

# make test and its longer variants: more stages across processes and nodes, more
# comparisons, the native trainers' quickstarts, more oracle losses.
test-full: setup
	$(BIN)/ruff check .
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest -m 'not images and not llamacpp' -ra --durations=30 $(PYTEST_ARGS)

# The torch image built cold (podman, debootstrap base) and run like the local runtime,
# through Docker's API, on Slurm and as the Kubernetes pod command; every backend's image
# built and the quickstart run in it.
test-images: setup
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest tests/test_containers.py tests/test_images.py -m images -s -ra $(PYTEST_ARGS)

# llama.cpp (built from source once into a test-only environment) reads ftx's GGUF files.
test-gguf: setup
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest tests/test_gguf.py -m llamacpp -ra $(PYTEST_ARGS)

fuzz: setup
	FTX_FUZZ_EXAMPLES=500 FTX_FUZZ_RANDOM=1 $(BIN)/python -m pytest tests/test_fuzz.py -q -m 'not images and not llamacpp'

snapshots: setup
	$(BIN)/python -m pytest tests/test_snapshots.py -q --update-snapshots

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs .ftx .pytest_cache
