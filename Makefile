# Two entry points: `make demo` (set up, then fine-tune on the built-in demo set) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Development checkouts have genuine ImageNet weights in ../shared/keras_home: use them unless KERAS_HOME is set.
ifeq ($(origin KERAS_HOME), undefined)
ifneq ($(wildcard ../shared/keras_home/models),)
export KERAS_HOME := $(abspath ../shared/keras_home)
endif
endif

.PHONY: setup demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m mame_transfer.finetune --demo --arch mobilenet --alpha 0.25 --weights $${WEIGHTS:-imagenet} \
		--image-size 128 --freeze-until block5 --head 128 --lr 1e-3 --epochs 8 --batch-size 32 --out saved_models/demo --overwrite

test: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) saved_models/demo
