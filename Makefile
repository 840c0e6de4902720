# Two commands for a fresh machine with Python 3.11:
#   make demo   trains the three decoders on the built-in data set and writes a report
#   make test   runs the fast tier of the test suite (grading, beyond the contract, the tool) and validates
#               the notebook; make test-all adds the slow tier (training runs, batches of submissions, ...)
# Both create the virtual environment .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-all test-module notebook mutants solutions compat bench figures clean gpu-check release

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: venv
	$(PY) -m helper.demo

# The fast tier's notebook run makes section 7 brief: the encoder pretrained on 500 images instead of 8,000, the
# decoders trained on 1,000 for 3 epochs (almost 3 minutes less on 2 cores); make test-all runs it as a student does.
test: venv
	$(PY) -m pytest -m "not slow" tests
	CAPTIONING_TRANSFER_OPTIONS="--pretrain-images 500 --train-images 1000 --epochs 3" \
		$(PY) -m pytest --nbval-current-env --nbval rnn_lstm_captioning.ipynb

# Everything: the fast tier, the slow tier (tests marked slow) and the notebook.
test-all: venv
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-current-env --nbval rnn_lstm_captioning.ipynb

# Grade one implementation (the contract's tests, with points, and the checks beyond it, reported):
# make test-module IMPL=path/to/rnn_lstm_captioning.py
test-module: venv
	$(PY) -m pytest tests/grading tests/beyond $(if $(IMPL),--impl $(IMPL),)

# Check that the grading tests catch broken copies of the reference module, and the checks beyond the
# contract catch copies that lose its extras.
mutants: venv
	$(PY) tests/mutants.py

# Check that correct solutions other than ours (tests/solutions/) get full marks and keep make test green.
solutions: venv
	$(PY) tests/solutions/check.py

# Colab's torch, not our pins: the grading tests (full marks) and the notebook with the oldest torch a student can pin
# on Colab and the newest on the package registry (PAIRINGS in tests/compat.py), each in a venv of its own under
# .venv-compat/ (built once, reused while its requirements are the same).
compat: venv
	$(PY) tests/compat.py

bench: venv
	$(PY) -m helper.bench recurrent
	$(PY) -m helper.bench training

# Store the notebook's outputs anew after a change to the module, the helpers or the data
# (nbval compares against them); the # NBVAL_SKIP cells stay without outputs.
notebook: venv
	$(PY) -m helper.notebook

# On a GPU machine: the module, the tests, the notebook, training and the benchmark on CUDA, in one
# report, runs/gpu-check/report.md (python -m helper.gpu_check --device cpu: a tiny dry run on the CPU).
gpu-check: venv
	$(PY) -m helper.gpu_check --out runs/gpu-check

figures: venv
	$(PY) -m helper.figures --out assets

clean:
	rm -rf $(VENV) .venv-compat runs

# The student kit (instructors): the module with its solutions replaced by hints, the notebook, helper/
# without the grader, the self-check and the hand-in command. make release KIT=path (default runs/student-kit;
# replaced when it exists).
release: venv
	$(PY) -m helper.release --force $(or $(KIT),runs/student-kit)

# Grade a batch of submissions (folders, .py files or submission zips) into a CSV, feedback texts and
# Gradescope results: make grade SUBMISSIONS="subs/*.zip" OUT=grades.csv [GRADE_OPTIONS="--notebook-points 0"]
.PHONY: grade
grade: venv
	$(PY) -m helper.grade $(SUBMISSIONS) --out $(or $(OUT),grades.csv) $(GRADE_OPTIONS)

# The Gradescope autograder package (instructors): a zip to upload as the assignment's autograder, which grades
# each submission with the batch grader's engine and sandbox. make gradescope [GRADESCOPE=path.zip]
# [GRADESCOPE_OPTIONS='--grade-options="--notebook-points 0" --other-visibility hidden']
.PHONY: gradescope
gradescope: venv
	$(PY) -m helper.gradescope $(or $(GRADESCOPE),runs/gradescope/autograder.zip) $(GRADESCOPE_OPTIONS)
