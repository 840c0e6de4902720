#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image; the package lies in
# /autograder/source (written by `python -m helper.gradescope OUT.zip`; README, "Instructors").
#
#   bash setup.sh           both parts
#   bash setup.sh system    the system part: apt packages (bubblewrap, util-linux's setpriv), Python 3.11
#   bash setup.sh python    the Python part: the virtual environment, the pinned packages of requirements.txt,
#                           then `python -m helper.instructor.gradescope setup`, which checks the versions and the
#                           sandbox, makes the grader's data set and records the interpreter for run_autograder
#
# Written for Gradescope's Ubuntu 22.04 base image, whose python3 is 3.10: older than the 3.11 that the grader
# and its pinned packages were checked with, so the system part installs python3.11 and python3.11-venv from
# Ubuntu's archive (the deadsnakes PPA when the archive has none) and the venv is made with it. A base image with
# another Python (older or newer) gets 3.11 the same way; the base python3 is never used, and the Python part
# stops when the venv's Python is not 3.11. Checked: the Python part, in the tests (tests/tool/instructor/
# test_gradescope.py: Debian 12, Python 3.11.7, bubblewrap 0.8.0, AUTOGRADER_VENV set to the project's
# environment, PIP_NO_INDEX=1). The system part has not run on Gradescope's image: use Test Autograder there.
#
# Settings (environment): AUTOGRADER_VENV (default /autograder/venv), AUTOGRADER_PYTHON (the interpreter that
# makes the venv; default python3.11), AUTOGRADER_TORCH_INDEX (where torch and torchvision come from; default
# PyTorch's CPU wheels; empty: PyPI like the rest).
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${AUTOGRADER_VENV:-/autograder/venv}"
TORCH_INDEX="${AUTOGRADER_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
WANTED=3.11

system_part() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends bubblewrap util-linux ca-certificates
    if ! command -v "python$WANTED" >/dev/null || ! "python$WANTED" -c "import venv, ensurepip" 2>/dev/null; then
        if ! apt-get install -y --no-install-recommends "python$WANTED" "python$WANTED-venv" "python$WANTED-dev"; then
            apt-get install -y --no-install-recommends software-properties-common gpg-agent
            add-apt-repository -y ppa:deadsnakes/ppa
            apt-get update
            apt-get install -y --no-install-recommends "python$WANTED" "python$WANTED-venv" "python$WANTED-dev"
        fi
    fi
    echo "setup.sh: bubblewrap $(bwrap --version 2>/dev/null || echo missing), $("python$WANTED" --version)"
}

python_part() {
    local python="${AUTOGRADER_PYTHON:-python$WANTED}"
    if [ ! -x "$VENV/bin/python" ]; then
        "$python" -m venv "$VENV"
    fi
    local version
    version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$version" != "$WANTED" ]; then
        echo "setup.sh: $VENV has Python $version; the grader is checked with $WANTED" >&2
        exit 1
    fi
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet)
    # torch and torchvision first, as CPU wheels (Gradescope has no GPU; PyPI's Linux wheels carry CUDA's libraries).
    local torch_pins
    torch_pins="$(grep -E '^(torch|torchvision)==' "$SOURCE/requirements.txt" || true)"
    if [ -n "$torch_pins" ] && [ -n "$TORCH_INDEX" ]; then
        # shellcheck disable=SC2086
        "${pip[@]}" --index-url "$TORCH_INDEX" $torch_pins
    fi
    "${pip[@]}" -r "$SOURCE/requirements.txt"
    cd "$SOURCE"
    "$VENV/bin/python" -m helper.instructor.gradescope setup --source "$SOURCE"
}

case "${1:-all}" in
    system) system_part ;;
    python) python_part ;;
    all) system_part; python_part ;;
    *) echo "usage: setup.sh [system|python|all]" >&2; exit 2 ;;
esac
