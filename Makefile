# Entry points for a fresh clone: `make demo`, `make test-all` (the full suite, what CI runs)
# and `make test` (the fast suite: the `slow` end-to-end tests deselected).
# Each creates ./.venv on first use and installs everything it needs into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch for the test/demo venv. torchvision is optional for users; the tests install it
# so that torchvision architectures are exercised for real (runs on CPU here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell echo $(TORCH_SPEC) | tr -c 'a-zA-Z0-9.\n' '_')
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test test-all lint venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wsi-saliency demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check wsi_saliency tests benchmarks
	$(VENV)/bin/mypy

# the fast suite: everything but the tests marked slow
test: lint
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

# the full suite: every test (CI: .ci/run)
test-all: lint
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
