# The two commands of the README:
#   make caption   set up, then caption the bundled sample with local Ray
#   make test      set up, then run the whole test suite
PY := .venv/bin/python

.PHONY: setup caption test lint
setup:
	@bash scripts/setup.sh

caption: setup
	$(PY) jobs/caption_dataset.py

# Two test files at a time (pytest-xdist; each file keeps its own Ray): job tests leave a
# core idle while Ray and actors start. On the 2-core machine tests/jobs took 737 s this
# way against 916 s one file at a time (2026-12-06), with the CPUs 95% busy. Three at a
# time was slower (1092 s for the suite). --no-loadscope-reorder keeps conftest's order
# (integration files first): xdist's default hands out files with the most tests first,
# so the few-test, minute-long job files started last and ran alone at the end.
test: setup
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: setup
	$(PY) -m ruff check combiner_core pipelines jobs tests
