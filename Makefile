# rollbench: `make demo` runs the two demo grids (sprite world, memory world) and their
# reports, `make test` the test suite (both set up .venv); `make test-slow` / `make test-gpu` the
# tests marked slow / gpu, recorded in tests/RECORD.md; `make mutants` the mutation check.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-gpu mutants lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) lint
	$(PY) -m pytest

# the slow / gpu tests, then their outcomes into tests/RECORD.md (pytest's status is kept)
test-slow test-gpu: test-%: $(STAMP)
	mkdir -p runs
	$(PY) -m pytest -m $* --junitxml=runs/tests-$*.xml; status=$$?; \
	$(PY) tests/record.py runs/tests-$*.xml $* && exit $$status

# each mutation of tests/mutants.py on a temporary copy of the tree; fails if one survives
mutants: $(STAMP)
	$(PY) tests/mutants.py

demo: $(STAMP)
	$(VENV)/bin/rollbench grid experiment=strategies_24x
	$(VENV)/bin/rollbench report experiment=strategies_24x
	$(VENV)/bin/rollbench grid experiment=memory_24x
	$(VENV)/bin/rollbench report experiment=memory_24x

bench: $(STAMP)
	$(VENV)/bin/rollbench bench video.latent_frames=480

clean:
	rm -rf runs .pytest_cache
