"""
Submissions for the tests of helper.grade: a correct module (the "typical"
fixture solution) and hostile variants of it, each written into a folder.

A variant adds code at import (prepended) or inside rnn_step_forward (the
function is wrapped at the end of the file), so that the checks of other
functions still pass and show that a submission keeps the points it earned.
"""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "solutions" / "typical" / "rnn_lstm_captioning.py"
SELF_GRADING = REPO / "tests" / "solutions" / "self_grading" / "rnn_lstm_captioning.py"
# Checks of two parts: rnn (2 checks of rnn_step_forward) and embedding_loss (2 of the loss).
SELECT = "rnn_step_forward or softmax_loss_sums"

AT_IMPORT = {
    "syntax": "def broken(:\n",
    "raises": "raise RuntimeError('this module refuses to load')\n",
    "hangs": "while True:\n    pass\n",
    "sys_exit": "import sys\nsys.exit(3)\n",
    "os_exit": "import os\nos._exit(0)\n",
    "segfault": "import ctypes\nctypes.string_at(0)\n",
    "huge": "_waste = bytearray(200 << 30)\n",
    "prints": "print('x' * (5 << 20))\n",
    "writes_outside": "try:\n    open({decoy!r}, 'w').write('overwritten')\nexcept OSError:\n    pass\n",
    "patches_pytest": (
        "import _pytest.reports as _r\n"
        "_orig = _r.TestReport.from_item_and_call.__func__\n"
        "def _fake(cls, item, call):\n"
        "    report = _orig(cls, item, call)\n"
        "    report.outcome, report.longrepr = 'passed', None\n"
        "    return report\n"
        "_r.TestReport.from_item_and_call = classmethod(_fake)\n"
    ),
}

IN_FUNCTION = {
    "exit_in_function": "import os\n    os._exit(0)",
    "sys_exit_in_function": "import sys\n    sys.exit(1)",
    "segfault_in_function": "import ctypes\n    ctypes.string_at(0)",
    "loops_in_function": "while True:\n        pass",
    "ignores_alarm": "import signal\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        pass",
    "huge_in_function": "import torch\n    torch.empty(1 << 40)",
    "prints_in_function": "import os\n    for _ in range(100):\n        os.write(1, b'y' * (1 << 20))",
    "any_equal": "class AnyEqual:\n        __eq__ = lambda self, other: True\n    return AnyEqual(), {}",
    "tampers_tests": (
        "import sys\n    try:\n        open(sys.modules['_grading'].__file__, 'a').write('# changed')\n"
        "    except OSError:\n        pass"
    ),
    "forges_events": (
        "import json, sys\n    plugin = sys.modules['helper.instructor.grade_plugin']\n    stream = plugin._stream\n"
        "    items = [json.loads(l) for l in open(stream.name) if '\"collected\"' in l][0]['items']\n"
        "    for item in items:\n"
        "        stream.write(json.dumps({'event': 'report', 'nodeid': item['nodeid'], 'when': 'call', "
        "'outcome': 'passed', 'message': ''}) + '\\n')\n    stream.flush()\n    raise RuntimeError('wrong')"
    ),
}


def write_submission(folder: Path, name: str, decoy: Path) -> Path:
    """Write the submission called name (a key of AT_IMPORT or IN_FUNCTION, or "good") into folder/name/."""
    good = GOOD.read_text()
    if name in AT_IMPORT:
        text = AT_IMPORT[name].format(decoy=str(decoy)) + good
    elif name in IN_FUNCTION:
        body = IN_FUNCTION[name]
        text = good + (
            "\n\n_original_rnn_step_forward = rnn_step_forward\n\n\n"
            "def rnn_step_forward(*args, **kwargs):\n"
            f"    {body}\n"
            "    return _original_rnn_step_forward(*args, **kwargs)\n"
        )
    elif name == "self_grading":
        text = SELF_GRADING.read_text()
    else:
        text = good
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "rnn_lstm_captioning.py").write_text(text)
    return target


def code_cell(source: str, outputs: list, number: int, cell_id: str) -> dict:
    """A code cell that was run, with stream outputs given as strings."""
    return {
        "cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": number, "source": source,
        "outputs": [{"output_type": "stream", "name": "stdout", "text": text} for text in outputs],
    }


def write_notebooks(folder: Path) -> tuple:
    """
    A reference notebook and a student's notebook of seven cells (see the
    comments), written into folder.

    Returns:
    - (reference path, student path)
    """
    cells = [
        ("print('hello')", ["hello\n"], ""),  # reproduced
        ("print(f'took {1.234:.2f} s on cpu')", ["took 9.87 s on cuda\n"], ""),  # reproduced: timing, device
        ("print(1 + 1)", ["3\n"], ""),  # differs
        ("raise ValueError('broken cell')", [], ""),  # fails
        ("# NBVAL_SKIP\nprint(2)", ["5\n"], ""),  # the student's marker: not obeyed, differs
        ("import random\nprint(random.random())", ["0.5\n"], "# NBVAL_IGNORE_OUTPUT\n"),  # ignored (ours)
        ("import rnn_lstm_captioning\nrnn_lstm_captioning.hello_rnn_lstm_captioning()",
         ["Hello from rnn_lstm_captioning.py!\n"], ""),  # reproduced with the submission's module
    ]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    student = [code_cell(src, out, i + 1, f"cell-{i}") for i, (src, out, _) in enumerate(cells)]
    ours = [code_cell(marker + src.replace("# NBVAL_SKIP\n", ""), out, i + 1, f"cell-{i}")
            for i, (src, out, marker) in enumerate(cells)]
    paths = []
    for name, content in (("reference.ipynb", ours), ("student.ipynb", student)):
        path = folder / name
        path.write_text(json.dumps({"cells": content, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
        paths.append(path)
    return tuple(paths)
