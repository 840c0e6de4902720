# Two commands for a fresh machine with Python 3.11:
#   make demo   trains the three decoders on the built-in data set and writes a report
#   make test   runs the autograder test suite and validates the notebook
# Both create the virtual environment .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-module notebook mutants bench figures clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: venv
	$(PY) -m helper.demo

test: venv
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-current-env --nbval rnn_lstm_captioning.ipynb

# The module tests alone, against any implementation: make test-module IMPL=path/to/file.py
test-module: venv
	$(PY) -m pytest tests $(if $(IMPL),--impl $(IMPL),)

# Check that the suite catches broken copies of the reference module.
mutants: venv
	$(PY) tests/mutants.py

bench: venv
	$(PY) -m helper.bench recurrent
	$(PY) -m helper.bench training

# Store the notebook's outputs anew after a change to the module, the helpers or the data
# (nbval compares against them); the # NBVAL_SKIP cells stay without outputs.
notebook: venv
	$(PY) -m helper.notebook

figures: venv
	$(PY) -m helper.figures --out assets

clean:
	rm -rf $(VENV) runs
