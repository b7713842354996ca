# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; installing it first keeps pip from
# resolving `torch>=2.4` to a multi-GB CUDA wheel.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint clean chromium

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m experiments.demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Debian's chromium for tests/test_browser_report.py, installed only as root and never fatal:
# without it that test skips.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium not installed: browser test will skip"; \
	else echo "not root, chromium not installed: browser test will skip"; fi

# Two workers (pytest-xdist), one torch thread each, handed one test at a time, longest first
# (tests marked `seconds(n)`); the 15 slowest tests are printed so their cost stays visible.
PYTEST_WORKERS ?= 2
test: lint chromium
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --maxschedchunk 1 --durations=15

# The shipped organism's science checks (minutes); run before landing a new organism.
test-slow: install
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
