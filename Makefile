# The two commands of the README:
#   make caption   set up, then caption the bundled sample with local Ray
#   make test      set up, then run the whole test suite
PY := .venv/bin/python

.PHONY: setup caption test lint
setup:
	@bash scripts/setup.sh

caption: setup
	$(PY) jobs/caption_dataset.py

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check combiner_core pipelines jobs tests
