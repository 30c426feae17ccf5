# The two commands of README.md:  make train  and  make test.
# Both create .venv (Python 3.11) and install the pinned dependencies on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Real data: ../shared/data when it is there, else the code's download cache.
TFAWD_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
export TFAWD_DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 1

CONFIG ?= configs/awd_lstm_wt2_cpu.cfg
MODEL_DIR ?= runs/$(basename $(notdir $(CONFIG)))

.PHONY: train test report venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

## Train + evaluate the default CPU configuration; results.json and plots in $(MODEL_DIR).
train: $(STAMP)
	$(PY) main.py --flagfile=$(CONFIG) --model_dir=$(MODEL_DIR)
	mkdir -p results && cp $(MODEL_DIR)/results.json results/$(notdir $(MODEL_DIR)).json
	cp $(MODEL_DIR)/loss_curve.png results/$(notdir $(MODEL_DIR))_loss_curve.png
	cp $(MODEL_DIR)/history.json results/$(notdir $(MODEL_DIR))_history.json
	$(PY) -m tfawd.report --write

## Regenerate README.md's results tables from results/*.json.
report: $(STAMP)
	$(PY) -m tfawd.report --write

## Run the test suite.
test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
