"""
What helper.grade writes: the CSV of the batch (one row per submission,
points per part), its export for a learning-management system (NAME-lms.csv:
one row per student, the total with the manual adjustment), and per
submission a feedback text and a results.json in Gradescope's autograder
format (gradescope_results).

A grade is a plain dict (helper.instructor.grade.grade_submission builds it):
    name, status, reason, parts {key: {"title", "points", "earned", ...}},
    checks [helper.grading.results.CheckResult], notebook {"points", "earned", "cells", "added_markers",
    "reason"} or None, model {"points", "earned", "metrics", "reason"} or None,
    total, max_total, sandbox, seconds, suite {"digest", "files"} (helper.instructor.regrade.suite_stamp),
    and after a regrade adjustment (str) and carried {column: value} (the instructor's columns of the old CSV).
All files are written under a temporary name and renamed (helper.data.atomic_output).

Who sees what on Gradescope (Visibility): a graded check that the kit's
public self-check also makes (PUBLIC_COUNTERPARTS: the same function,
checked the same way) is "visible" at once; every other result
"after_due_date"; both settings and the list of public checks can be changed.
"""
import csv
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import List, Optional, Tuple

from helper.common.files import atomic_output
from helper.kit.rubric import PARTS

VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")
# Graded check (its test function in tests/grading) -> the public check of the kit (helper/kit/public_checks*.py)
# that checks the same function the same way: what a student can already see in `make check`.
PUBLIC_COUNTERPARTS = {
    "test_rnn_step_forward_is_tanh_of_the_two_affine_maps": "rnn_step_forward matches torch.nn.RNN",
    "test_rnn_step_backward_matches_numeric_gradient": "rnn_step_backward matches numeric gradients",
    "test_rnn_forward_matches_torch_nn_rnn": "rnn_forward matches torch.nn.RNN",
    "test_rnn_backward_matches_numeric_gradient": "rnn_backward matches numeric gradients",
    "test_rnn_module_parameters_have_names_shapes_and_initialisation":
        "RNN module: parameters, forward and step_forward",
    "test_rnn_module_forward_and_step_forward_match_torch": "RNN module: parameters, forward and step_forward",
    "test_word_embedding_parameter_has_name_shape_and_initialisation": "WordEmbedding: parameter and fixed values",
    "test_word_embedding_forward_looks_up_rows": "WordEmbedding: parameter and fixed values",
    "test_temporal_softmax_loss_sums_over_time_and_averages_over_batch":
        "temporal_softmax_loss: equal scores cost log V per counted word",
    "test_temporal_softmax_loss_ignores_targets_equal_to_ignore_index":
        "temporal_softmax_loss: fixed values with <NULL> padding",
    "test_temporal_softmax_loss_gradient_by_autograd_matches_the_reference":
        "temporal_softmax_loss: autograd gradient matches numeric gradient",
    "test_lstm_parameters_have_names_shapes_and_initialisation": "LSTM.step_forward: parameters, matches torch.nn.LSTM",
    "test_lstm_step_forward_matches_torch_lstm_cell": "LSTM.step_forward: parameters, matches torch.nn.LSTM",
    "test_lstm_forward_matches_torch_nn_lstm_with_zero_initial_cell": "LSTM.forward matches torch.nn.LSTM",
    "test_dot_product_attention_matches_direct_softmax_computation":
        "dot_product_attention: the case worked out by hand",
    "test_dot_product_attention_weights_sum_to_one_over_locations":
        "dot_product_attention: fixed values, weights sum to one",
    "test_attention_lstm_parameters_have_names_shapes_and_initialisation":
        "AttentionLSTM.step_forward: parameters and fixed values",
    "test_attention_lstm_step_forward_adds_attention_to_the_gates":
        "AttentionLSTM.step_forward: parameters and fixed values",
    "test_attention_lstm_forward_matches_reference_loop": "AttentionLSTM.forward: fixed values",
    "test_image_encoder_output_of_112x112_images_is_a_4x4_grid":
        "ImageEncoder: (N, 400, 4, 4) features; uint8 and float images agree",
    "test_image_encoder_uint8_and_float_images_agree_in_eval_mode":
        "ImageEncoder: (N, 400, 4, 4) features; uint8 and float images agree",
    "test_hello_prints_the_greeting": "hello_rnn_lstm_captioning prints its greeting",
    "test_captioning_rnn_has_exactly_the_parameters_of_its_parts":
        "CaptioningRNN 'rnn': pieces, loss with a zero output layer, sample's shapes",
    "test_sample_returns_generated_words_of_max_length":
        "CaptioningRNN 'rnn': pieces, loss with a zero output layer, sample's shapes",
}
BEYOND_PREFIX = "[beyond the assignment, not graded] "


@dataclass(frozen=True)
class Visibility:
    """
    When Gradescope shows each result to the student (one of VISIBILITIES).

    - public: patterns (fnmatch) of the public results: a check's test
      function ("test_rnn_forward_*") or full name, or "notebook" / "model"
    - public_visibility, other_visibility: of the public results and of the others
    - results_visibility: of the whole result (Gradescope's top-level setting)
    """

    public: Tuple[str, ...] = tuple(PUBLIC_COUNTERPARTS)
    public_visibility: str = "visible"
    other_visibility: str = "after_due_date"
    results_visibility: str = "visible"

    def __post_init__(self):
        for value in (self.public_visibility, self.other_visibility, self.results_visibility):
            if value not in VISIBILITIES:
                raise ValueError(f"visibility {value!r} is not one of {VISIBILITIES}")

    def is_public(self, name: str) -> bool:
        """Whether the result called name (as in results.json) is a public one."""
        function = name.split("::")[-1].split("[")[0]
        return not name.startswith(BEYOND_PREFIX) and any(fnmatch(function, p) or fnmatch(name, p)
                                                           for p in self.public)

    def of(self, name: str) -> str:
        """The visibility of the result called name."""
        return self.public_visibility if self.is_public(name) else self.other_visibility


def csv_columns() -> List[str]:
    """
    name, one column per rubric part, notebook, model, total, max_total,
    adjustment (the instructor's, kept by a regrade), status, reason, suite
    (the digest of the checks that graded it), sandbox.
    """
    return ["name"] + [p.key for p in PARTS] + ["notebook", "model", "total", "max_total", "adjustment", "status",
                                                "reason", "suite", "sandbox"]


def _points(value: float) -> str:
    return f"{value:.2f}"


def csv_row(grade: dict) -> dict:
    """One CSV row of a grade."""
    row = {"name": grade["name"], "status": grade["status"], "reason": grade["reason"],
           "sandbox": "bubblewrap" if grade["sandbox"].startswith("bubblewrap") else "NONE (--no-sandbox)"}
    for part in PARTS:
        row[part.key] = _points(grade["parts"][part.key]["earned"])
    row["notebook"] = _points(grade["notebook"]["earned"]) if grade.get("notebook") else ""
    row["model"] = _points(grade["model"]["earned"]) if grade.get("model") else ""
    row["total"], row["max_total"] = _points(grade["total"]), _points(grade["max_total"])
    row["adjustment"], row["suite"] = grade.get("adjustment", ""), (grade.get("suite") or {}).get("digest", "")
    return {**row, **grade.get("carried", {})}


def lms_path(path: Path) -> Path:
    """The LMS export beside the CSV: grades.csv -> grades-lms.csv."""
    return path.with_name(f"{path.stem}-lms.csv")


def lms_total(grade: dict) -> str:
    """The total with the manual adjustment (when it is a number); '' after a grader error (not a grade)."""
    if grade["status"] == "grader error":
        return ""
    try:
        adjustment = float(grade.get("adjustment") or 0)
    except ValueError:
        adjustment = 0.0
    return _points(max(0.0, grade["total"] + adjustment))


def write_csv(path: Path, grades: List[dict]) -> None:
    """
    The batch's CSV, one row per submission sorted by name, with the
    instructor's own columns of a regraded CSV after "adjustment"; and beside
    it the LMS export (lms_path): columns student, total.
    """
    carried = list(dict.fromkeys(k for g in grades for k in g.get("carried", {})))
    columns = csv_columns()
    at = columns.index("adjustment") + 1
    columns[at:at] = carried
    ordered = sorted(grades, key=lambda g: g["name"])
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for grade in ordered:
                writer.writerow(csv_row(grade))
    with atomic_output(lms_path(path)) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["student", "total"])
            writer.writerows([grade["name"], lms_total(grade)] for grade in ordered)


def _failed_line(check) -> str:
    what = check.message.strip().replace("\n", "\n      ") or check.outcome
    return f"  - {check.name}: {what}"


def feedback_text(grade: dict) -> str:
    """The student's feedback: points per part, every failed check and what it expected."""
    lines = [f"Grade of {grade['name']}: {grade['total']:.2f} / {grade['max_total']:.2f}"]
    if not grade["sandbox"].startswith("bubblewrap"):
        lines.append(f"Graded without a sandbox: {grade['sandbox']}")
    if grade["reason"]:
        lines.append(f"Note: {grade['reason']}")
    lines.append("")
    checks = grade["checks"]
    for part in PARTS:
        summary = grade["parts"][part.key]
        lines.append(f"{part.title}: {summary['earned']:.2f} / {summary['points']:g} "
                     f"({summary['passed']} of {summary['tests']} checks passed)")
        failed = [c for c in checks if c.kind == "graded" and c.part == part.key and c.outcome != "passed"]
        lines += [_failed_line(c) for c in failed]
    beyond = [c for c in checks if c.kind == "beyond"]
    if beyond:
        passed = sum(c.outcome == "passed" for c in beyond)
        lines += ["", f"Beyond the assignment (reported, not graded): {passed} of {len(beyond)} checks passed"]
        lines += [_failed_line(c) for c in beyond if c.outcome != "passed"]
    notebook = grade.get("notebook")
    if notebook:
        lines += ["", f"Notebook: {notebook['earned']:.2f} / {notebook['points']:g}"
                  + (f" ({notebook['reason']})" if notebook.get("reason") else "")]
        for cell in notebook.get("cells", []):
            first = cell["message"].strip().splitlines()[:6]
            lines.append(f"  cell {cell['cell']}: {cell['status']}" + "".join(f"\n      {m}" for m in first))
        for number, marker in notebook.get("added_markers", []):
            lines.append(f"  cell {number}: you added the marker {marker}; it was not obeyed")
    model = grade.get("model")
    if model:
        lines += ["", f"Trained model: {model['earned']:.2f} / {model['points']:g}"
                  + (f" ({model['reason']})" if model.get("reason") else "")]
        if model.get("metrics"):
            lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in model["metrics"].items()))
    lines += ["", "This grade has more checks than the public self-check of the kit."]
    return "\n".join(lines) + "\n"


def _check_output(check) -> str:
    """The feedback of one check: 'passed', else its message (its outcome when it has none)."""
    if check.outcome == "passed":
        return "passed"
    return check.message.strip() or check.outcome


def _line_output(key: str, line: dict) -> str:
    """The feedback of the notebook or model line."""
    parts = [line["reason"]] if line.get("reason") else []
    if key == "notebook":
        parts += [f"cell {c['cell']}: {c['status']}" + (f": {_first(c['message'])}" if c.get("message") else "")
                  for c in line.get("cells", [])]
    elif line.get("metrics"):
        parts.append(", ".join(f"{k} {v:.3f}" for k, v in line["metrics"].items()))
    return "\n".join(parts) or "passed"


def _first(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def result_tests(grade: dict, visibility: Visibility = Visibility()) -> List[dict]:
    """
    The tests of results.json: each graded check (its points), each check
    beyond the assignment (0 of 0), then the notebook and model lines.

    Returns:
    - [{"name", "number", "score", "max_score", "status", "output", "tags", "visibility"}]
    """
    tests, index = [], {p.key: i + 1 for i, p in enumerate(PARTS)}
    counts = {}
    for check in grade["checks"]:
        if check.kind not in ("graded", "beyond"):
            continue
        graded = check.kind == "graded"
        group = str(index.get(check.part, "B")) if graded else "B"
        counts[group] = counts.get(group, 0) + 1
        name = check.name if graded else BEYOND_PREFIX + check.name
        status = "passed" if check.outcome == "passed" else "failed"
        tests.append({"name": name, "number": f"{group}.{counts[group]}", "score": round(check.earned, 4),
                      "max_score": round(check.points, 4), "status": status, "output": _check_output(check),
                      "tags": [check.part if graded else "beyond"], "visibility": visibility.of(name)})
    for key in ("notebook", "model"):
        line = grade.get(key)
        if line:
            passed = line["earned"] >= line["points"]
            tests.append({"name": key, "number": key[0].upper(), "score": round(line["earned"], 4),
                          "max_score": line["points"], "status": "passed" if passed else "failed",
                          "output": _line_output(key, line), "tags": [key], "visibility": visibility.of(key)})
    return tests


def leaderboard(grade: dict) -> Optional[List[dict]]:
    """The model's BLEU-4, CIDEr-D and exact matches on the grader's data (0 without a model); None when off."""
    model = grade.get("model")
    if model is None:
        return None
    metrics = model.get("metrics") or {}
    return [{"name": name, "value": round(float(metrics.get(key, 0.0)), 4), "order": "desc"}
            for name, key in (("BLEU-4", "bleu4"), ("CIDEr-D", "cider"), ("exact matches", "exact"))]


WHEN = {"after_due_date": "after the due date", "after_published": "once the grades are published",
        "hidden": "to the instructors only", "visible": "now"}


def _public_reason(grade: dict, later: set) -> Tuple[str, int]:
    """The grade's reason without the incidents of checks shown later ("NAME: message"), and how many it left out."""
    text, dropped = grade["reason"], 0
    for check in grade["checks"]:
        incident = f"{check.name}: {check.message}"
        if check.name in later and incident in text:
            text, dropped = text.replace(incident, ""), dropped + 1
    return re.sub(r"(;\s*)+", "; ", text).strip("; "), dropped


def public_output(grade: dict, visibility: Visibility = Visibility()) -> str:
    """results.json's top-level text: the score, the status, and the notes that name no check kept for later."""
    tests = result_tests(grade, visibility)
    later = {t["name"] for t in tests if t["visibility"] != "visible"}
    reason, dropped = _public_reason(grade, later)
    lines = [f"Score: {grade['total']:.2f} of {grade['max_total']:.2f} ({grade['status']})"]
    lines += [f"Note: {reason}"] if reason else []
    if dropped:
        lines.append(f"Note: and {dropped} about results shown later")
    if not grade["sandbox"].startswith("bubblewrap"):
        lines.append(f"Graded without a sandbox: {grade['sandbox']}")
    if later:
        lines.append(f"Results shown {WHEN[visibility.other_visibility]}: {len(later)} of {len(tests)}.")
    digest = (grade.get("suite") or {}).get("digest")
    if digest:
        lines.append(f"Graded by the checks of suite {digest}.")
    return "\n".join(lines)


def gradescope_results(grade: dict, visibility: Visibility = Visibility()) -> dict:
    """
    The results.json of Gradescope's autograder specification
    (gradescope-autograders.readthedocs.io, "Autograder Specifications").

    Inputs:
    - grade: the grade dict (module docstring)
    - visibility: who sees which result when

    Returns:
    - {"score", "execution_time", "output", "visibility", "stdout_visibility": "hidden", "extra_data": {"status",
       "reason", "suite_digest", "suite_files", "sandbox", "max_total"}, "tests": result_tests(...),
       "leaderboard" (when the model is scored)}
    """
    suite = grade.get("suite") or {}
    results = {
        "score": round(grade["total"], 4),
        "execution_time": int(round(grade.get("seconds", 0.0))),
        "output": public_output(grade, visibility),
        "visibility": visibility.results_visibility,
        "stdout_visibility": "hidden",
        "extra_data": {"status": grade["status"], "reason": grade["reason"], "suite_digest": suite.get("digest", ""),
                       "suite_files": suite.get("files", {}), "sandbox": grade["sandbox"],
                       "max_total": round(grade["max_total"], 4)},
        "tests": result_tests(grade, visibility),
    }
    board = leaderboard(grade)
    if board is not None:
        results["leaderboard"] = board
    return results


def write_submission_files(folder: Path, grade: dict) -> None:
    """feedback.txt and results.json of one submission, in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "feedback.txt") as tmp:
        tmp.write_text(feedback_text(grade), encoding="utf-8")
    with atomic_output(folder / "results.json") as tmp:
        tmp.write_text(json.dumps(gradescope_results(grade), indent=1), encoding="utf-8")
