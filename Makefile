# The two commands of README.md:  make train  and  make test.
# Both create .venv (Python 3.11) and install the pinned dependencies on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# cpu: tensorflow-cpu; gpu: tensorflow[and-cuda] (make test TF_EXTRA=gpu on a GPU machine)
TF_EXTRA ?= cpu

# Real data: ../shared/data when it is there, else the code's download cache.
TFAWD_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
export TFAWD_DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 1

LM_CONFIG ?= configs/awd_lstm_wt2_cpu_adaptive.cfg
SPEECH_CONFIG ?= configs/las_digits.cfg
CONFIG ?= $(LM_CONFIG)
MODEL_DIR ?= runs/$(basename $(notdir $(CONFIG)))
NAME := $(notdir $(MODEL_DIR))

.PHONY: train train-lm train-speech run test lint report venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(TF_EXTRA),test]"
	touch $@

## Train + evaluate the CPU-sized language model and speech model (about 2 h in all on a
## 2-core EPYC with AVX512_BF16, 3 h on AVX2-only CPUs or the AMX Xeon: README.md, by class).
train: train-lm train-speech

train-lm: $(STAMP)
	$(MAKE) run CONFIG=$(LM_CONFIG)

train-speech: $(STAMP)
	$(MAKE) run CONFIG=$(SPEECH_CONFIG)

## Run one flagfile (CONFIG=...): train, evaluate, export to saved_models/, and copy its
## results, plots and attention maps to results/.
run: $(STAMP)
	$(PY) main.py --flagfile=$(CONFIG) --model_dir=$(MODEL_DIR)
	$(PY) main.py --flagfile=$(CONFIG) --model_dir=$(MODEL_DIR) --mode=export
	mkdir -p results && cp $(MODEL_DIR)/results.json results/$(NAME).json
	cp $(MODEL_DIR)/loss_curve.png results/$(NAME)_loss_curve.png
	cp $(MODEL_DIR)/history.json results/$(NAME)_history.json
	if [ -d $(MODEL_DIR)/attention ]; then rm -rf results/$(NAME)_attention && \
	  cp -r $(MODEL_DIR)/attention results/$(NAME)_attention && \
	  cp $(MODEL_DIR)/attention.npy results/$(NAME)_attention/; fi
	$(PY) -m tfawd.core.readme_tables --write

## Regenerate README.md's results tables from results/*.json.
report: $(STAMP)
	$(PY) -m tfawd.core.readme_tables --write

# The numerical specifications, run a second time with TensorFlow's own kernels (oneDNN off):
# they must hold on either kernel set (runtime.configure_onednn turns oneDNN on by default).
KERNEL_TESTS := tests/test_lstm_kernel.py tests/test_layers.py tests/test_losses_and_eval.py \
	tests/test_adaptive_softmax.py tests/test_inference.py tests/test_export.py

## Run the test suite (then its numerical part with oneDNN off).
test: $(STAMP)
	$(PY) -m pytest -q
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -q $(KERNEL_TESTS)

## Lint (ruff, configured in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
