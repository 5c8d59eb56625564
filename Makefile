# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   -- simulate and reconstruct the shipped sample with the default prior
#   make test   -- run the test suite (make test-fast: without the tests marked slow)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
PLUGINS := plugins/ct plugins/template plugins/mri plugins/ultrasound

.PHONY: venv demo test test-fast lint bench clean wheels docs

venv: $(STAMP)

$(STAMP): pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (set PY=...)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pin torch first: an unpinned torch requirement can pull a multi-GB CUDA build
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev,ray]' $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m medrecon.demo --output out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/operators.py

# wheels (+ sdists) of medrecon and every plugin, twine-checked, installed into a fresh venv and
# smoke-tested from outside the checkout (.ci/wheels.sh); KEEP=1 keeps the wheels and prints where
wheels: $(STAMP)
	PY=$(PY) .ci/wheels.sh

# the documentation site into site/ (mkdocs.yml; any warning fails the build)
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) out .pytest_cache site
