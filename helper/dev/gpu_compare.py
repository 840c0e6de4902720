"""
The measuring steps of `python -m helper.gpu_check` and its report's layout.

- `compare_api`: each piece of the module's public API (the contract's
  functions and modules only) run on the device and on the CPU with the same
  inputs and weights, float32 and float64; the largest relative difference.
- `bench_on_device`: the training and decoding benchmark of
  helper/dev/bench.py (the assignment's plain float32 loop against
  `train_captioner(fast=True)`: mixed precision, channels_last, on CUDA the
  data on the device), run on the device.
- `render_markdown`: report.md from the report's dict.
"""
import copy
from typing import Callable, Dict, List, Sequence

import torch

from helper.captioning.checkpoint import ENCODER_CHANNELS
from helper.common.utils import reset_seed
from helper.dev.bench import decoding_captions_per_second, training_images_per_second

# Relative differences allowed between the device and the CPU. TF32 is off
# during the comparison, so both compute in true float32 and differ only in
# the order of their sums; the encoder's 16 convolutions and batch norms
# add up more of those than a single layer does.
# A greedy caption ("sample": share of differing words) may flip at a near
# tie in float32, and the words after a flip follow it.
TOLERANCE = {torch.float64: {"layer": 1e-9, "model": 1e-7, "sample": 0.0},
             torch.float32: {"layer": 1e-4, "model": 1e-3, "sample": 0.25}}
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "circle", "square", "above", "below", "the"]


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |a - b| / max(|b|, 1e-30) over all elements, in float64 on the CPU."""
    a, b = ours.detach().double().cpu(), reference.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _copy_to(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """
    A copy of module on device, in the module's mode: a deep copy of the
    encoder's torch.fx graph module comes back with its submodules in
    training mode, whatever mode they had.
    """
    return copy.deepcopy(module).to(device).train(module.training)


def _both(fn: Callable, args: Sequence, device: torch.device) -> List[float]:
    """fn on the CPU arguments and on their copies on the device (tensors moved, modules deep-copied)."""
    def moved(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, torch.nn.Module):
            return _copy_to(value, device)
        return value

    as_list = lambda out: [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
    cpu, dev = as_list(fn(*args)), as_list(fn(*[moved(a) for a in args]))
    return [relative_difference(d, c) for d, c in zip(dev, cpu)]


def _model_loss_and_grads(model: torch.nn.Module, images: torch.Tensor, captions: torch.Tensor):
    """The training loss (train mode) and the gradient of every parameter, in a fixed order."""
    model.train()
    model.zero_grad()
    loss = model(images, captions)
    loss.backward()
    return (loss, *[p.grad for _, p in sorted(model.named_parameters()) if p.grad is not None])


def _greedy(model: torch.nn.Module, images: torch.Tensor):
    """Greedy captions (eval mode); a mismatch fraction is compared, not values."""
    model.eval()
    with torch.no_grad():
        out = model.sample(images, max_length=8)
    return out[0] if isinstance(out, tuple) else out


def _sample_difference(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """The share of words that differ between greedy captions on the CPU and on device."""
    on_cpu = _greedy(model, images)
    on_device = _greedy(_copy_to(model, device), images.to(device)).cpu()
    return float((on_cpu != on_device).double().mean())


def _pieces(rlc, dtype: torch.dtype, cells: Sequence[str], num_images: int) -> List[tuple]:
    """
    (name, kind, function, arguments) of each API piece, inputs made on the
    CPU from seed 0; the captioning model of each of cells, on num_images
    images (2 or more).
    """
    reset_seed(0)
    N, T, D, H, V = 3, 5, 6, 8, len(WORDS)
    r = lambda *shape: torch.randn(*shape, dtype=dtype)
    x, h, Wx, Wh, b = r(N, D), r(N, H), r(D, H), r(H, H), r(H)
    xs, dh = r(N, T, D), r(N, T, H)
    lstm, attn_lstm = rlc.LSTM(D, H).to(dtype), rlc.AttentionLSTM(D, H).to(dtype)
    embedding = rlc.WordEmbedding(V, D).to(dtype)
    words = torch.randint(V, (N, T))
    step_backward = lambda x, h, Wx, Wh, b, d: rlc.rnn_step_backward(d, rlc.rnn_step_forward(x, h, Wx, Wh, b)[1])
    backward = lambda x, h0, Wx, Wh, b, d: rlc.rnn_backward(d, rlc.rnn_forward(x, h0, Wx, Wh, b)[1])
    pieces = [
        ("rnn_step_forward", "layer", lambda *a: rlc.rnn_step_forward(*a)[0], (x, h, Wx, Wh, b)),
        ("rnn_step_backward", "layer", step_backward, (x, h, Wx, Wh, b, r(N, H))),
        ("rnn_forward", "layer", lambda *a: rlc.rnn_forward(*a)[0], (xs, h, Wx, Wh, b)),
        ("rnn_backward", "layer", backward, (xs, h, Wx, Wh, b, dh)),
        ("WordEmbedding", "layer", lambda m, w: m(w), (embedding, words)),
        ("temporal_softmax_loss", "layer", lambda s, y: rlc.temporal_softmax_loss(s, y, ignore_index=0),
         (r(N, T, V), words)),
        ("LSTM.step_forward", "layer", lambda m, *a: m.step_forward(*a), (lstm, x, h, r(N, H))),
        ("LSTM.forward", "layer", lambda m, *a: m(*a), (lstm, xs, h)),
        ("dot_product_attention", "layer", rlc.dot_product_attention, (h, r(N, H, 4, 4))),
        ("AttentionLSTM.forward", "layer", lambda m, *a: m(*a), (attn_lstm, xs, r(N, H, 4, 4))),
    ]
    images = torch.randint(0, 256, (num_images, 3, 112, 112), dtype=torch.uint8)
    encoder = rlc.ImageEncoder(pretrained=False, verbose=False).to(dtype).eval()
    pieces.append(("ImageEncoder (eval)", "model", lambda m, i: m(i), (encoder, images)))
    captions = torch.randint(4, V, (num_images, 7))
    captions[:, 0], captions[:, -2:] = 1, torch.tensor([2, 0])
    word_to_idx = {w: i for i, w in enumerate(WORDS)}
    for cell in cells:
        reset_seed(1)
        model = rlc.CaptioningRNN(word_to_idx, input_dim=ENCODER_CHANNELS, wordvec_dim=16, hidden_dim=H, cell_type=cell,
                                  image_encoder_pretrained=False, ignore_index=0).to(dtype)
        pieces.append((f"CaptioningRNN {cell}: loss and gradients", "model", _model_loss_and_grads, (model, images, captions)))
        pieces.append((f"CaptioningRNN {cell}: greedy sample", "sample", _greedy, (model, images)))
    return pieces


def compare_api(device: torch.device, cells: Sequence[str] = ("rnn", "lstm", "attn"), num_images: int = 4
                ) -> List[Dict[str, object]]:
    """
    Step 2 of gpu_check: every API piece on device against the CPU; the
    captioning model for each of cells, on num_images images.

    Returns:
    - one row per piece and dtype: piece, dtype, difference (largest
      relative difference over its outputs; for a greedy sample the share
      of differing words), tolerance, ok
    """
    import rnn_lstm_captioning as rlc

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    try:
        for dtype in (torch.float32, torch.float64):
            for name, kind, fn, args in _pieces(rlc, dtype, cells, num_images):
                difference = _sample_difference(*args, device) if kind == "sample" else max(_both(fn, args, device))
                tolerance = TOLERANCE[dtype][kind]
                rows.append({"piece": name, "dtype": str(dtype).replace("torch.", ""), "difference": difference,
                             "tolerance": tolerance, "ok": difference <= tolerance})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def bench_on_device(data: dict, device: torch.device, size: dict) -> List[Dict[str, object]]:
    """Step 6 of gpu_check: one row per cell type with training and decoding speeds."""
    rows = []
    for cell in ("rnn", "lstm", "attn"):
        row = {"cell": cell, "batch_size": size["bench_batch"], "steps": size["bench_steps"], "rounds": size["bench_rounds"]}
        plain, ours, _ = training_images_per_second(data, cell, size["bench_steps"], size["bench_batch"],
                                                    size["bench_rounds"], device)
        row.update({"plain_images_per_second": plain, "ours_images_per_second": ours, "speedup": ours / plain})
        for beam in (1, 3):
            row[f"beam{beam}_captions_per_second"] = decoding_captions_per_second(data, cell, beam, size["decode_images"],
                                                                                 device)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# report.md

NOTEBOOK_ON_GPU = (
    "What may differ on a GPU: the device line (its output is ignored, `# NBVAL_IGNORE_OUTPUT`); the overfitting "
    "losses (ignored, and checked by the asserts after them), since cuDNN and cuBLAS sum in another order and "
    "convolutions may use TF32; the checks in float64 print OK/FAIL against tolerances and must match exactly."
)


def _pytest_lines(result: dict) -> List[str]:
    lines = [f"`{result['command']}`: {result['passed']} passed, {result['failed']} failed, {result['errors']} errors, "
             f"{result['skipped']} skipped, exit code {result['returncode']}, {result['seconds']:.0f} s."]
    lines += [f"- failed: `{name}`" for name in result["failures"]]
    return lines


def render_markdown(report: dict) -> str:
    """report.md: the machine, then one section per step, each figure naming the device it was measured on."""
    m, on = report["machine"], report["measured_on"]
    cpu_note = ("**Measured on the CPU** (`--device cpu`, size tiny): a dry run of the script; "
                "none of these figures is a GPU figure.") if on == "cpu" else f"Measured on the GPU {m['gpu']}."
    lines = [f"# GPU check ({report['size']} size, device {m['device']})", "", cpu_note, "",
             f"- GPU: {m['gpu'] or 'none'}; torch {m['torch']}; CUDA {m['cuda'] or 'none (CPU build)'}; "
             f"cuDNN {m['cudnn'] or '-'}; Python {m['python']}", f"- CPU: {m['cpu']}",
             f"- total {report['total_seconds']:.0f} s; steps: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in report["steps_seconds"].items()), "",
             f"## The API on {on} against the CPU", "",
             "Same inputs and weights on both; TF32 off. Difference: largest relative difference of the outputs "
             "(greedy sample: share of differing words).", "",
             "| piece | dtype | difference | tolerance | ok |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['piece']} | {r['dtype']} | {r['difference']:.2e} | {r['tolerance']:.0e} | {'yes' if r['ok'] else '**NO**'} |"
              for r in report["api"]]
    grading = report["grading"]
    lines += ["", "## The grading tests", "",
              "The grading tests have no device option: they run on the CPU, except the `sample` test that also runs "
              "on CUDA where there is a GPU; the table above is their CUDA-against-CPU counterpart."
              + (f" At this size only the tests matching `-k {grading['filter']}` ran." if grading["filter"] else ""), ""]
    lines += _pytest_lines(grading)
    notebook = report["notebook"]
    lines += ["", "## The notebook under nbval", "",
              (f"Run on {on} (the notebook picks CUDA itself where there is a GPU). " if notebook["executed"]
               else "Not run at this size: nbval only collected its cells. ") + NOTEBOOK_ON_GPU, ""]
    lines += _pytest_lines(notebook) if notebook["executed"] else [
        f"`{notebook['command']}`: {notebook['collected']} cells collected, exit code {notebook['returncode']}."]
    lines += ["", f"## Training with the GPU defaults, on {on}", "",
              "helper.train, encoder training too, fixed epochs, no time budget; greedy validation captions.", "",
              "| decoder | epochs | train time | images/s | peak memory | BLEU-4 | CIDEr-D | exact |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["training"]:
        lines.append(f"| {r['cell']} | {r['epochs']} | {r['train_seconds']:.1f} s | {r['images_per_second']:.0f} | "
                     f"{r['peak_memory_mb']:.0f} MB | {r['bleu4']:.3f} | {r['cider']:.3f} | {r['exact']:.1%} |")
    lines += ["", f"Peak memory: {report['training'][0]['memory_kind']}.", "",
              f"## Training benchmark and decoding, on {on}", "",
              "The plain float32 loop of the assignment against ours (mixed precision, channels_last, on CUDA the "
              "data on the device), encoder training too; median of alternating rounds. Decoding: float32, eval mode.", "",
              "| decoder | batch | plain (img/s) | ours (img/s) | speed-up | greedy (captions/s) | beam 3 (captions/s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["bench"]:
        lines.append(f"| {r['cell']} | {r['batch_size']} | {r['plain_images_per_second']:.0f} | "
                     f"{r['ours_images_per_second']:.0f} | {r['speedup']:.2f}x | {r['beam1_captions_per_second']:.0f} | "
                     f"{r['beam3_captions_per_second']:.0f} |")
    return "\n".join(lines) + "\n"
