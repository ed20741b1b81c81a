# rollbench: `make demo` runs the two demo grids (sprite world, memory world) and their
# reports, `make test` the test suite (both set up .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

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

demo: $(STAMP)
	$(VENV)/bin/rollbench grid experiment=strategies_24x
	$(VENV)/bin/rollbench report experiment=strategies_24x
	$(VENV)/bin/rollbench grid experiment=memory_24x
	$(VENV)/bin/rollbench report experiment=memory_24x

bench: $(STAMP)
	$(VENV)/bin/rollbench bench video.latent_frames=480

clean:
	rm -rf runs .pytest_cache
