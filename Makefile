# Two entry points: `make demo` (install the package, then fine-tune on the built-in demo set) and `make test`
# (install it with the test tools, then run the suite). Both use the virtual environment $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Development checkouts have genuine ImageNet weights in ../shared/keras_home: use them unless KERAS_HOME is set.
ifeq ($(origin KERAS_HOME), undefined)
ifneq ($(wildcard ../shared/keras_home/models),)
export KERAS_HOME := $(abspath ../shared/keras_home)
endif
endif

.PHONY: setup setup-test demo test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The package alone (what a user installs): no test tools, no browser driver.
$(VENV)/.installed: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

# The package with the test tools and the optional TensorBoard (its tests run too).
$(VENV)/.installed-test: setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test,tensorboard]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

demo: setup
	$(VENV)/bin/mame-finetune --demo --arch mobilenet --alpha 0.25 --weights $${WEIGHTS:-imagenet} \
		--image-size 128 --freeze-until block5 --head 128 --lr 1e-3 --epochs 8 --batch-size 32 --out saved_models/demo --overwrite

test: setup-test
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n $${TEST_WORKERS:-2}

clean:
	rm -rf $(VENV) saved_models/demo
