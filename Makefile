# Two entry points for a fresh machine: `make demo` (web UI on the bundled model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test bench browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CUDA build of torch 2.14.1 runs on CPU too, and torchvision must match
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[torch,runtime,gallery,postgres,app,api,distill,ray,dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/faceverify serve

# Debian's Chromium for the browser test (skipped with a reason where it cannot be installed)
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=10  # the ten slowest: the suite must stay under 15 minutes

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
