# Two entry points for a fresh machine: `make demo` (web UI on the bundled model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test bench browser js clean

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

# the pinned npm packages (package-lock.json) of the browser page's runtime (web/) and the Node
# example (examples/node/): from the npm registry, never fetched when a page or an export runs
JS_DIRS := web examples/node
js:
	@if command -v npm >/dev/null; then for d in $(JS_DIRS); do \
	  test -f $$d/package-lock.json || continue; \
	  test $$d/node_modules/.package-lock.json -nt $$d/package-lock.json || \
	  (cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; done; \
	else echo "npm not found: the browser page and Node example tests will be skipped"; fi

test: $(STAMP) browser js
	$(BIN)/python -m pytest -q --durations=10  # the ten slowest: the suite must stay under 15 minutes

bench: $(STAMP) browser js
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache $(addsuffix /node_modules,$(JS_DIRS))
