"""
Mutation check of the autograder: does the suite catch wrong implementations?

Each mutant is a copy of rnn_lstm_captioning.py with one typical mistake
(a swapped gate, a missing scale, a transposed gradient, a forgotten
ignore_index, an off-by-one caption shift, ...).

- A mutant that breaks the contract must be caught by the grading tests
  alone (tests/grading), which must pass on the unmutated file.
- A mutant that keeps the contract but loses one of our module's extras (a
  hard-coded 4x4 grid, no input validation, ...) must pass the grading tests,
  as a correct student solution does, and be caught by the checks beyond the
  contract (tests/beyond, strict).

    .venv/bin/python tests/mutants.py [--impl PATH] [--jobs 2] [--only NAME ...]

Prints a table mutant -> caught/missed and the test that caught it; exits
non-zero when a mutant survives, when a mutation no longer applies (its text
is not found exactly once), or when the unmutated file fails.
"""

import argparse
import multiprocessing
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# One thread per test run: the runs share the cores, and tiny ops gain nothing
# from more. Set before torch is imported (here, once, for all forked runs).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["CAPTIONING_IMPL"] = ""

import torch  # noqa: E402,F401  (imported once here; every forked run inherits it)
import torchvision  # noqa: E402,F401

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
sys.path.insert(0, str(REPO_ROOT))
from _grading import BEYOND_TEST_FILES, GRADING_TEST_FILES  # noqa: E402

RUN_TIMEOUT_S = 300


@dataclass
class Edit:
    """Occurrence `which` of `old` (found exactly `count` times in the module) becomes `new`."""

    old: str
    new: str
    count: int = 1
    which: int = 0


@dataclass
class Mutant:
    """One mistake, and the test file expected to catch it (run first, to stop early with -x)."""

    name: str
    test_file: str
    edits: List[Edit]

    @property
    def beyond(self) -> bool:
        """Whether the mistake keeps the contract (caught beyond it, not by the grading tests)."""
        return self.test_file in BEYOND_TEST_FILES


def test_file(name: str) -> str:
    """The path of tests/grading/<name>.py or tests/beyond/<name>.py."""
    for path in [*GRADING_TEST_FILES, *BEYOND_TEST_FILES]:
        if Path(path).stem == name:
            return path
    raise ValueError(f"no test file {name}.py in tests/grading or tests/beyond")


def M(name, test_name, old, new, count=1, which=0) -> Mutant:
    """A mutant of one edit, caught (we expect) by tests/grading/<test_name>.py or tests/beyond/<test_name>.py."""
    return Mutant(name, test_file(test_name), [Edit(old, new, count, which)])


MUTANTS: List[Mutant] = [
    # --- vanilla RNN, by hand
    M("rnn_step_backward: dWx transposed", "test_rnn", "dWx = x.t() @ da", "dWx = da.t() @ x"),
    M("rnn_step_backward: dx uses Wx, not Wx^T", "test_rnn", "dx = da @ Wx.t()", "dx = da @ Wx"),
    M("rnn_step_backward: dWh transposed", "test_rnn", "dWh = prev_h.t() @ da", "dWh = da.t() @ prev_h"),
    M("rnn_step_backward: tanh' = 1 - h", "test_rnn", "(1 - next_h**2)", "(1 - next_h)"),
    M("rnn_step_backward: db averaged over the batch", "test_rnn", "db = da.sum(dim=0)", "db = da.mean(dim=0)"),
    M("rnn_backward: gradient from later steps dropped", "test_rnn", "dh[:, t] + dprev_h", "dh[:, t]"),
    M(
        "rnn_forward: hidden states stacked time-major",
        "test_rnn",
        "h = torch.stack(hs, dim=1)",
        "h = torch.stack(hs, dim=0)",
    ),
    M(
        "RNN: Wh scaled by 1/sqrt(D)",
        "test_rnn",
        "torch.randn(hidden_dim, hidden_dim) / math.sqrt(hidden_dim)",
        "torch.randn(hidden_dim, hidden_dim) / math.sqrt(input_dim)",
    ),
    M(
        "RNN: bias initialised to ones",
        "test_rnn",
        "nn.Parameter(torch.zeros(hidden_dim))",
        "nn.Parameter(torch.ones(hidden_dim))",
    ),
    # --- embedding and loss
    M(
        "WordEmbedding: scaled by 1/sqrt(W)",
        "test_embedding_loss",
        "torch.randn(vocab_size, embed_size) / math.sqrt(vocab_size)",
        "torch.randn(vocab_size, embed_size) / math.sqrt(embed_size)",
    ),
    M(
        "temporal_softmax_loss: ignore_index forgotten",
        "test_embedding_loss",
        "ignore_index=-100 if ignore_index is None else ignore_index",
        "ignore_index=-100",
    ),
    M(
        "temporal_softmax_loss: ignore_index=None ignores word 0",
        "test_any_grid_any_batch",
        "ignore_index=-100 if ignore_index is None else ignore_index",
        "ignore_index=0 if ignore_index is None else ignore_index",
    ),
    M("temporal_softmax_loss: mean over N*T", "test_embedding_loss", "loss = loss / N", "loss = loss / (N * T)"),
    # --- LSTM
    M(
        "LSTM gates: i and f swapped",
        "test_lstm",
        "ai, af, ao, ag = a.chunk(4, dim=1)",
        "af, ai, ao, ag = a.chunk(4, dim=1)",
    ),
    M(
        "LSTM gates: o and g swapped (torch's order)",
        "test_lstm",
        "ai, af, ao, ag = a.chunk(4, dim=1)",
        "ai, af, ag, ao = a.chunk(4, dim=1)",
    ),
    M("LSTM gates: tanh instead of sigmoid", "test_lstm", "torch.sigmoid(ao)", "torch.tanh(ao)"),
    M("LSTM: h = o * c, no tanh", "test_lstm", "next_h = o * torch.tanh(next_c)", "next_h = o * next_c"),
    M(
        "LSTM.forward: c0 = h0, not zeros",
        "test_lstm",
        "prev_h, prev_c = h0, torch.zeros_like(h0)",
        "prev_h, prev_c = h0, h0",
    ),
    M(
        "LSTM.forward: cell state not carried",
        "test_lstm",
        "prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c)\n",
        "prev_h, _ = self.step_forward(x_t, prev_h, prev_c)\n",
    ),
    Mutant(
        "LSTM.forward: cell state kept from the previous call (not reset)",
        test_file("test_lstm"),
        [
            Edit(
                "prev_h, prev_c = h0, torch.zeros_like(h0)",
                "prev_h, prev_c = h0, getattr(self, 'kept_c', torch.zeros_like(h0))",
            ),
            Edit(
                "prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c)\n",
                "prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c)\n            self.kept_c = prev_c\n",
            ),
        ],
    ),
    M(
        "LSTM: Wx scaled by 1/sqrt(H)",
        "test_lstm",
        "torch.randn(input_dim, hidden_dim * 4) / math.sqrt(input_dim)",
        "torch.randn(input_dim, hidden_dim * 4) / math.sqrt(hidden_dim)",
        count=2,
        which=0,
    ),
    # --- attention
    M("dot_product_attention: no 1/sqrt(H) scale", "test_attention", "squeeze(1) / math.sqrt(H)", "squeeze(1)"),
    M(
        "dot_product_attention: softmax over the batch",
        "test_attention",
        "torch.softmax(scores, dim=1)",
        "torch.softmax(scores, dim=0)",
    ),
    M(
        "dot_product_attention: weights transposed",
        "test_attention",
        "attn_weights = weights.reshape(N, Da, Da)",
        "attn_weights = weights.reshape(N, Da, Da).transpose(1, 2)",
    ),
    M(
        "AttentionLSTM.step_forward: attention ignored",
        "test_attention",
        "a = x @ self.Wx + prev_h @ self.Wh + attn @ self.Wattn + self.b",
        "a = x @ self.Wx + prev_h @ self.Wh + self.b",
    ),
    M(
        "AttentionLSTM.forward: c0 = 0",
        "test_attention",
        "prev_h = prev_c = A.mean(dim=(2, 3))",
        "prev_h = A.mean(dim=(2, 3))\n        prev_c = torch.zeros_like(prev_h)",
    ),
    M(
        "AttentionLSTM.forward: attention not recomputed",
        "test_attention",
        "attn, _ = dot_product_attention(prev_h, A)",
        "attn, _ = dot_product_attention(A.mean(dim=(2, 3)), A)",
    ),
    M(
        "AttentionLSTM.forward: cell state not carried",
        "test_attention",
        "prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c, attn)",
        "prev_h, _ = self.step_forward(x_t, prev_h, prev_c, attn)",
    ),
    M(
        "AttentionLSTM: Wattn initialised to zeros",
        "test_attention",
        "self.Wattn = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))",
        "self.Wattn = nn.Parameter(torch.zeros(hidden_dim, hidden_dim * 4))",
    ),
    # --- encoder
    M(
        "ImageEncoder: no ImageNet normalisation",
        "test_encoder",
        "images = (images - mean) / std",
        "images = images - 0 * mean * std",
    ),
    M(
        "ImageEncoder: uint8 not scaled to [0, 1]",
        "test_encoder",
        "images.to(self.mean.dtype) / 255.0",
        "images.to(self.mean.dtype)",
    ),
    M(
        "ImageEncoder: float images clamped",
        "test_encoder",
        "images = (images - mean) / std",
        "images = (images.clamp(0, 1) - mean) / std",
    ),
    M(
        "ImageEncoder: forward switches to eval mode",
        "test_encoder",
        'return self.backbone(images)["c5"]',
        'self.backbone.eval()\n        return self.backbone(images)["c5"]',
    ),
    M(
        "ImageEncoder: features of trunk block3, not block4",
        "test_encoder",
        'return_nodes={"trunk_output.block4": "c5"}',
        'return_nodes={"trunk_output.block3": "c5"}',
    ),
    # --- captioning model
    M(
        "CaptioningRNN.forward: inputs shifted by one",
        "test_captioning_model",
        "captions_in = captions[:, :-1]",
        "captions_in = captions[:, 1:]",
    ),
    M(
        "CaptioningRNN.forward: targets not shifted",
        "test_captioning_model",
        "captions_out = captions[:, 1:]",
        "captions_out = captions[:, :-1]",
    ),
    M(
        "CaptioningRNN.forward: ignore_index not passed",
        "test_captioning_model",
        "temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)",
        "temporal_softmax_loss(scores, captions_out)",
    ),
    M(
        "CaptioningRNN: h0 not used (zeros)",
        "test_captioning_model",
        "h0_or_A = self.feat_proj(features.mean(dim=(2, 3)))",
        "h0_or_A = 0 * self.feat_proj(features.mean(dim=(2, 3)))",
    ),
    M(
        "CaptioningRNN: h0 from the top-left cell, not the mean",
        "test_captioning_model",
        "h0_or_A = self.feat_proj(features.mean(dim=(2, 3)))",
        "h0_or_A = self.feat_proj(features[:, :, 0, 0])",
    ),
    M(
        "CaptioningRNN (attn): grid A transposed",
        "test_captioning_model",
        "h0_or_A = A.permute(0, 3, 1, 2)",
        "h0_or_A = A.permute(0, 3, 2, 1)",
    ),
    M(
        "CaptioningRNN: an extra parameter",
        "test_captioning_model",
        "self.output_proj = nn.Linear(hidden_dim, vocab_size)",
        "self.output_proj = nn.Linear(hidden_dim, vocab_size)\n        self.extra = nn.Parameter(torch.zeros(1))",
    ),
    M(
        "sample: returns <START> first",
        "test_captioning_model",
        "word = self.output_proj(h).argmax(dim=1)\n            captions[:, t] = word",
        "captions[:, t] = word\n            word = self.output_proj(h).argmax(dim=1)",
    ),
    M(
        "sample: does not feed back its words",
        "test_captioning_model",
        "x = self.embedding(word.unsqueeze(1)).squeeze(1)",
        "x = self.embedding(torch.full_like(word, self._start).unsqueeze(1)).squeeze(1)",
    ),
    M(
        "sample (lstm): cell state reset every step",
        "test_captioning_model",
        "h, c = self.rnn.step_forward(x, h, c)\n",
        "h, _ = self.rnn.step_forward(x, h, c)\n",
    ),
    M(
        "sample (attn): c0 = 0",
        "test_captioning_model",
        "h = c = A.mean(dim=(2, 3))",
        "h = A.mean(dim=(2, 3))\n            c = torch.zeros_like(h)",
    ),
    M(
        "sample (attn): weights of the wrong step",
        "test_captioning_model",
        "attn_weights_all[:, t] = attn_weights.cpu()",
        "attn_weights_all[:, max(t - 1, 0)] = attn_weights.cpu()",
    ),
    M(
        "sample: one word too few",
        "test_captioning_model",
        "for t in range(max_length):",
        "for t in range(max_length - 1):",
    ),
    M(
        "sample (lstm): forget-gate bias dropped",
        "test_captioning_model",
        "h, c = self.rnn.step_forward(x, h, c)\n",
        "h, c = lstm_cell(x @ self.rnn.Wx + h @ self.rnn.Wh"
        " + self.rnn.b * (torch.arange(self.rnn.b.numel()) // h.shape[1] != 1), c)\n",
    ),
    M(
        "sample (attn): forget-gate bias dropped",
        "test_captioning_model",
        "h, c = self.rnn.step_forward(x, h, c, attn)",
        "h, c = lstm_cell(x @ self.rnn.Wx + h @ self.rnn.Wh + attn @ self.rnn.Wattn"
        " + self.rnn.b * (torch.arange(self.rnn.b.numel()) // h.shape[1] != 1), c)",
    ),
    M(
        "sample: every caption stops at the first <END> of any",
        "test_captioning_model",
        "word = self.output_proj(h).argmax(dim=1)\n            captions[:, t] = word",
        "word = self.output_proj(h).argmax(dim=1)\n            captions[:, t] = word\n"
        "            if (word == self._end).any():\n                break",
    ),
    # --- beyond the contract: correct solutions, but without our module's extras
    M(
        "CaptioningRNN: always ignores <NULL>, whatever ignore_index says",
        "test_any_grid_any_batch",
        "temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)",
        "temporal_softmax_loss(scores, captions_out, ignore_index=self._null)",
    ),
    M(
        "dot_product_attention: the 4x4 grid hard-coded",
        "test_any_grid_any_batch",
        "attn_weights = weights.reshape(N, Da, Da)",
        "attn_weights = weights.reshape(N, 4, 4)",
    ),
    M(
        "dot_product_attention: squeeze() drops a batch of one",
        "test_any_grid_any_batch",
        "attn = torch.bmm(A_flat, weights.unsqueeze(2)).squeeze(2)",
        "attn = torch.bmm(A_flat, weights.unsqueeze(2)).squeeze()",
    ),
    M(
        "ImageEncoder: verbose dummy batch in train mode",
        "test_encoder_beyond",
        "            self.backbone.eval()\n            with torch.no_grad():",
        "            with torch.no_grad():",
    ),
    M(
        "ImageEncoder: built with the deprecated pretrained= argument",
        "test_encoder_beyond",
        "cnn = models.regnet_x_400mf(weights=None)",
        "cnn = models.regnet_x_400mf(pretrained=False)",
    ),
    M(
        "CaptioningRNN: captions outside the vocabulary not checked",
        "test_bad_input",
        "if low < 0 or high >= vocab_size:",
        "if False:",
    ),
    M(
        "CaptioningRNN: image shape not checked",
        "test_bad_input",
        "if images.dim() != 4 or images.shape[1] != 3:",
        "if False:",
    ),
]


def mutate(source: str, mutant: Mutant) -> Optional[str]:
    """source with the mutant's edits applied, or None when an edit's text is not found as often as expected."""
    for edit in mutant.edits:
        if source.count(edit.old) != edit.count:
            return None
        at = -1
        for _ in range(edit.which + 1):
            at = source.index(edit.old, at + 1)
        source = source[:at] + edit.new + source[at + len(edit.old) :]
    return source


def runs_for(mutant: Optional[Mutant]) -> Dict[str, Tuple[List[str], bool]]:
    """
    The pytest runs of a mutant: name -> (arguments, whether the run must fail).

    The unmutated file must pass the grading tests and the checks beyond them;
    a contract-breaking mutant must fail the grading tests (the file expected
    to catch it first, to stop early with -x); a mutant that keeps the
    contract must pass the grading tests and fail the checks beyond.
    """
    strict = ["--beyond", "strict"]
    if mutant is None:
        return {"grading": (list(GRADING_TEST_FILES), False), "beyond": ([*BEYOND_TEST_FILES, *strict], False)}
    if mutant.beyond:
        first = [mutant.test_file] + [f for f in BEYOND_TEST_FILES if f != mutant.test_file]
        return {"grading": (list(GRADING_TEST_FILES), False), "beyond": ([*first, *strict], True)}
    first = [mutant.test_file] + [f for f in GRADING_TEST_FILES if f != mutant.test_file]
    return {"grading": (first, True)}


def _pytest_child(args: List[str], log_file: str):
    """In a forked child: run pytest with output to log_file, and exit with its code."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 3
    try:
        import pytest

        os.chdir(REPO_ROOT)
        code = int(pytest.main(args))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_all(jobs: Dict[Tuple[str, str], Tuple[Path, List[str]]], max_jobs: int, tmp: Path):
    """
    Run pytest for every job ((mutant, run) -> (impl file, pytest arguments)),
    max_jobs at a time, each in a child process forked from this one: the
    child starts with torch already imported, which halves the cost of a run.

    Returns (mutant, run) -> (exit code, first failing test or None, output tail).
    """
    context = multiprocessing.get_context("fork")
    waiting = list(jobs.items())
    running, results = {}, {}
    while waiting or running:
        while waiting and len(running) < max_jobs:
            key, (impl_file, files) = waiting.pop(0)
            log_file = tmp / f"log{len(results) + len(running):03d}.txt"
            args = [*files, f"--impl={impl_file}", "-x", "-q", "--tb=no", "-rfE", "-p", "no:randomly", "-p", "no:xdist"]
            process = context.Process(target=_pytest_child, args=(args, str(log_file)))
            process.start()
            running[key] = (process, log_file, time.monotonic())
        time.sleep(0.05)
        for key, (process, log_file, started) in list(running.items()):
            if process.is_alive() and time.monotonic() - started < RUN_TIMEOUT_S:
                continue
            if process.is_alive():
                process.kill()
            process.join()
            output = log_file.read_text()
            failed = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
            results[key] = (process.exitcode, failed.group(1) if failed else None, output[-2000:])
            del running[key]
    return results


def verdict(runs: Dict[str, Tuple[List[str], bool]], results) -> Tuple[bool, str]:
    """(whether every run of a mutant went as required, what to print): see runs_for."""
    notes = []
    ok = True
    for run, (_, must_fail) in runs.items():
        code, caught_by, tail = results[run]
        if must_fail and code == 1 and caught_by:
            notes.append(f"caught by {caught_by}")
        elif not must_fail and code == 0:
            notes.append(f"{run} tests pass")
        else:
            ok = False
            expected = "fail" if must_fail else "pass"
            notes.append(f"the {run} tests must {expected}; exit {code} {caught_by or ''}\n{tail if code not in (0, 1) or not must_fail else ''}")
    return ok, "; ".join(notes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--impl", default=str(REPO_ROOT / "rnn_lstm_captioning.py"), help="the file to mutate")
    parser.add_argument("--jobs", type=int, default=2, help="test runs at a time")
    parser.add_argument("--only", nargs="*", help="run only the mutants whose name contains one of these")
    args = parser.parse_args(argv)

    source = Path(args.impl).read_text()
    mutants = [m for m in MUTANTS if not args.only or any(word in m.name for word in args.only)]
    started = time.monotonic()
    stale = [m.name for m in mutants if mutate(source, m) is None]
    live = [("(unmutated)", source, None)] + [(m.name, mutate(source, m), m) for m in mutants if m.name not in stale]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = {}
        for i, (name, text, mutant) in enumerate(live):
            impl_file = tmp / f"mutant{i:02d}" / "rnn_lstm_captioning.py"
            impl_file.parent.mkdir()
            impl_file.write_text(text)
            runs[name] = runs_for(mutant)
            for run, (files, _) in runs[name].items():
                jobs[(name, run)] = (impl_file, files)
        results = run_all(jobs, args.jobs, tmp)

    width = max(len(name) for name in [*runs, *stale]) + 2
    print(f"{'mutant':<{width}} {'result':<8} how")
    ok = True
    caught = 0
    for name, mutant_runs in runs.items():
        good, notes = verdict(mutant_runs, {run: results[(name, run)] for run in mutant_runs})
        ok = ok and good
        label = "passes" if name == "(unmutated)" else "caught"
        caught += good and name != "(unmutated)"
        print(f"{name:<{width}} {(label if good else 'MISSED'):<8} {notes}")
    for name in stale:
        ok = False
        print(
            f"{name:<{width}} {'STALE':<8} its text is not found (as often as expected): the mutation no longer applies"
        )
    beyond = sum(m.beyond for m in mutants)
    print(
        f"\n{caught} of {len(mutants)} mutants caught in {time.monotonic() - started:.0f} s "
        f"({len(mutants) - beyond} by the grading tests alone, {beyond} keep the contract and are caught beyond it)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
