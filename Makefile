# ftx: the two commands a new user needs.
#   make run    set everything up from nothing and run the quickstart (torch, local runtime)
#   make test   set everything up from nothing and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL := .ftx/models/quickstart-llama
export FTX_HOME ?= $(HOME)/.cache/ftx

.PHONY: setup run test test-images test-gguf snapshots fuzz lint format clean

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

# Every backend's image built (podman, debootstrap base) and the quickstart run in it.
test-images: setup
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest tests/test_images.py -m images -s -ra $(PYTEST_ARGS)

# llama.cpp (built from source once into a test-only environment) reads ftx's GGUF files.
test-gguf: setup
	$(BIN)/ftx env create torch --if-missing
	$(BIN)/python -m pytest tests/test_gguf.py -m llamacpp -ra $(PYTEST_ARGS)

fuzz: setup
	FTX_FUZZ_EXAMPLES=500 FTX_FUZZ_RANDOM=1 $(BIN)/python -m pytest tests/test_fuzz.py -q

snapshots: setup
	$(BIN)/python -m pytest tests/test_snapshots.py -q --update-snapshots

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs .ftx .pytest_cache
