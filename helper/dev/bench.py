"""
Benchmarks, run as `python -m helper.bench {recurrent,training}`.

- recurrent: forward + backward time of the module's RNN, LSTM and attention
  LSTM against PyTorch's own layers (torch.nn.RNN, torch.nn.LSTM) measured in
  the same process on the same inputs, and the ratio between them.
- training: training images/s of the plain loop of the standard assignment
  (float32, default memory format, no autocast, one minibatch at a time
  moved to the device) against ours (`train_captioner(fast=True)`), for each
  cell type on the same data, the two loops taking turns (median of their
  rounds); greedy and beam decoding captions/s; and the validation loss and
  metrics of short runs of each loop over a few seeds (a short run's result
  swings with the seed), to show that speed costs nothing.

Figures are printed, never asserted: timings on shared machines are noisy.
Each timing is the median of several repetitions after a warm-up.
"""
import argparse
import statistics
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from helper.captioning.checkpoint import ENCODER_CHANNELS, new_model
from helper.captioning.decoding import generate_captions
from helper.captioning.metrics import evaluate_captions
from helper.captioning.training import train_captioner
from helper.common.utils import reset_seed
from helper.data.datasets import load_dataset
from helper.dev.machine import machine_description


def median_seconds(fn: Callable[[], None], repeats: int = 7, warmup: int = 2) -> float:
    """
    Inputs:
    - fn: the work to time
    - repeats: timed calls
    - warmup: untimed calls first (allocator, oneDNN kernel selection)

    Returns:
    - the median wall time of one call, in seconds
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(forward: Callable[[], torch.Tensor], params: List[torch.Tensor]) -> Callable[[], None]:
    """A closure that runs forward, backprops a sum and clears the gradients."""

    def step():
        out = forward()
        out.sum().backward()
        for p in params:
            p.grad = None

    return step


def bench_recurrent(N: int = 256, T: int = 16, D: int = 256, H: int = 512, repeats: int = 7) -> List[Dict]:
    """
    Time forward + backward of the recurrent layers, float32, on the CPU.

    Inputs:
    - N, T, D, H: batch, time steps, input size, hidden size
    - repeats: timed repetitions (the median is reported)

    Returns:
    - one dict per comparison: name, ours_ms, torch_ms, ratio (ours / torch)
    """
    import rnn_lstm_captioning as rlc

    torch.manual_seed(0)
    x = torch.randn(N, T, D, requires_grad=True)
    h0 = torch.randn(N, H, requires_grad=True)
    results = []

    # Vanilla RNN: the module's layer (autograd through rnn_forward) vs torch.nn.RNN.
    ours = rlc.RNN(D, H)
    theirs = nn.RNN(D, H, batch_first=True, nonlinearity="tanh")
    results.append(
        _compare(
            "RNN forward+backward",
            forward_backward(lambda: ours(x, h0), list(ours.parameters()) + [x, h0]),
            forward_backward(lambda: theirs(x, h0.unsqueeze(0))[0], list(theirs.parameters()) + [x, h0]),
            repeats,
        )
    )

    # The same RNN through the hand-written backward pass.
    dh = torch.randn(N, T, H)

    def manual_rnn():
        with torch.no_grad():
            _, cache = rlc.rnn_forward(x, h0, ours.Wx, ours.Wh, ours.b)
            rlc.rnn_backward(dh, cache)

    results.append(
        _compare(
            "RNN manual forward+backward",
            manual_rnn,
            forward_backward(lambda: theirs(x, h0.unsqueeze(0))[0], list(theirs.parameters()) + [x, h0]),
            repeats,
        )
    )

    ours = rlc.LSTM(D, H)
    theirs = nn.LSTM(D, H, batch_first=True)
    c0 = torch.zeros(1, N, H)
    results.append(
        _compare(
            "LSTM forward+backward",
            forward_backward(lambda: ours(x, h0), list(ours.parameters()) + [x, h0]),
            forward_backward(lambda: theirs(x, (h0.unsqueeze(0), c0))[0], list(theirs.parameters()) + [x, h0]),
            repeats,
        )
    )

    # The standard assignment's LSTM.forward: one step_forward call per time
    # step on x[:, t], where ours splits x once with unbind.
    def step_by_step():
        h, c = h0, torch.zeros_like(h0)
        states = []
        for t in range(T):
            h, c = ours.step_forward(x[:, t], h, c)
            states.append(h)
        return torch.stack(states, dim=1)

    results.append(
        _compare(
            "LSTM forward+backward (vs a forward of step_forward calls)",
            forward_backward(lambda: ours(x, h0), list(ours.parameters()) + [x, h0]),
            forward_backward(step_by_step, list(ours.parameters()) + [x, h0]),
            repeats,
        )
    )

    # On the CPU torch.nn.LSTM runs oneDNN's fused LSTM kernel; with oneDNN
    # off it runs PyTorch's own implementation, a loop of ATen operations.
    def native_lstm():
        # flags() warns about TF32 on Intel GPUs, which do not matter here, on entering and on leaving.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=False):
                forward_backward(lambda: theirs(x, (h0.unsqueeze(0), c0))[0], list(theirs.parameters()) + [x, h0])()

    results.append(
        _compare(
            "LSTM forward+backward (vs nn.LSTM without oneDNN)",
            forward_backward(lambda: ours(x, h0), list(ours.parameters()) + [x, h0]),
            native_lstm,
            repeats,
        )
    )

    # Attention LSTM against torch.nn.LSTM: the same recurrence plus one
    # attention over a 4x4 grid and one more (H, 4H) product per step.
    ours = rlc.AttentionLSTM(D, H)
    A = torch.randn(N, H, 4, 4, requires_grad=True)
    results.append(
        _compare(
            "AttentionLSTM forward+backward (vs nn.LSTM)",
            forward_backward(lambda: ours(x, A), list(ours.parameters()) + [x, A]),
            forward_backward(lambda: theirs(x, (h0.unsqueeze(0), c0))[0], list(theirs.parameters()) + [x, h0]),
            repeats,
        )
    )
    return results


def _compare(name: str, ours: Callable[[], None], theirs: Callable[[], None], repeats: int) -> Dict:
    """Time two closures alternately, so that drifts in machine load hit both alike."""
    ours_times, theirs_times = [], []
    for _ in range(repeats):
        ours_times.append(median_seconds(ours, repeats=1, warmup=1 if not ours_times else 0))
        theirs_times.append(median_seconds(theirs, repeats=1, warmup=1 if not theirs_times else 0))
    ours_ms = 1000 * statistics.median(ours_times)
    theirs_ms = 1000 * statistics.median(theirs_times)
    return {"name": name, "ours_ms": ours_ms, "torch_ms": theirs_ms, "ratio": ours_ms / theirs_ms}


def print_table(title: str, rows: List[Dict]) -> None:
    """Print results as a markdown table."""
    print(f"\n{title}\n")
    print("| benchmark | ours (ms) | torch.nn (ms) | ours / torch |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['ours_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f}x |")


def _shapes_subset(num_train: int, num_val: int) -> dict:
    """The built-in data set, cut to the sizes a benchmark needs."""
    data = load_dataset("shapes")
    out = {"vocab": data["vocab"]}
    for split, n in (("train", num_train), ("val", num_val)):
        for key in ("images", "captions", "image_ids"):
            out[f"{split}_{key}"] = data[f"{split}_{key}"][:n]
    return out


def _new_model(data: dict, cell: str, seed: int = 0):
    """A fresh CaptioningRNN for the data, with the same weights for the same seed."""
    reset_seed(seed)
    word_to_idx = data["vocab"]["token_to_idx"]
    config = {"input_dim": ENCODER_CHANNELS, "wordvec_dim": 128, "hidden_dim": 128, "cell_type": cell,
              "ignore_index": word_to_idx["<NULL>"]}
    return new_model(config, word_to_idx)


def timed_seconds(work: Callable[[], None], device: torch.device = torch.device("cpu")) -> float:
    """Seconds of work, waiting for the device's queue to empty before and after (CUDA runs asynchronously)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def training_images_per_second(
    data: dict, cell: str, steps: int, batch_size: int, repeats: int = 5, device: torch.device = torch.device("cpu")
) -> Tuple[float, float, List[float]]:
    """
    Training throughput of the plain loop and of ours, each on its own copy
    of the same model, the encoder training too. The two loops take turns,
    `repeats` rounds of `steps` minibatches each, so that a slow spell of the
    machine hits both alike; each figure is the median of its rounds.

    Inputs:
    - data: a data set dict
    - cell: "rnn", "lstm" or "attn"
    - steps: timed minibatches per round, after two untimed ones
    - batch_size: images per minibatch
    - repeats: rounds per loop
    - device: where to train

    Returns a tuple of:
    - plain, ours: training throughput in images per second
    - round_speedups: ours over plain within each round, to show the spread
    """
    images, captions = data["train_images"], data["train_captions"]
    models = {fast: _new_model(data, cell) for fast in (False, True)}
    warm, n = min(2 * batch_size, len(images)), min(steps * batch_size, len(images))

    def run(fast: bool, count: int) -> None:
        train_captioner(models[fast], images[:count], captions[:count], 1, batch_size, 1e-3,
                        device=str(device), fast=fast, progress=False)

    seconds = {False: [], True: []}
    for fast in models:
        run(fast, warm)
    for _ in range(repeats):
        for fast in models:
            seconds[fast].append(timed_seconds(lambda: run(fast, n), device))
    round_speedups = [plain / ours for plain, ours in zip(seconds[False], seconds[True])]
    return n / statistics.median(seconds[False]), n / statistics.median(seconds[True]), round_speedups


def decoding_captions_per_second(
    data: dict, cell: str, beam_size: int, num_images: int = 256, device: torch.device = torch.device("cpu")
) -> float:
    """Captions per second of greedy (beam_size 1) or beam decoding, float32, eval mode, batches of 64."""
    model = _new_model(data, cell).to(device).eval()
    images = data["val_images"][:num_images].to(device)
    with torch.no_grad():
        generate_captions(model, images[:8], beam_size=beam_size)
        seconds = timed_seconds(lambda: [generate_captions(model, chunk, beam_size=beam_size)
                                         for chunk in images.split(64)], device)
    return len(images) / seconds


def short_run_metrics(data: dict, cell: str, fast: bool, epochs: int, batch_size: int, seed: int = 0) -> Dict:
    """
    Train with one loop or the other, then score the val captions. Both
    loops start from the same weights and visit the images in the same order
    for the same seed.

    Returns:
    - dict with seconds (of training), val_loss (teacher-forced, per image),
      bleu4 and cider (greedy captions)
    """
    model = _new_model(data, cell, seed=seed)
    reset_seed(seed + 1)
    start = time.perf_counter()
    train_captioner(model, data["train_images"], data["train_captions"], epochs, batch_size, 2e-3,
                    fast=fast, progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    result = evaluate_captions(model, data["val_images"], data["val_captions"], data["val_image_ids"],
                               data["vocab"]["idx_to_token"])
    with torch.no_grad():  # teacher-forced loss: smooth, where greedy captions of a short run are all or nothing
        val_loss = sum(model(images, captions).item() * len(images) for images, captions in
                       zip(data["val_images"].split(250), data["val_captions"].split(250))) / len(data["val_images"])
    return {"seconds": seconds, "val_loss": val_loss, **{k: result["metrics"][k] for k in ("bleu4", "cider")}}


def bench_training(
    cells, steps: int, batch_size: int, quality_train: int, quality_epochs: int, repeats: int = 5,
    quality_seeds: int = 3,
) -> None:
    """Print the training, decoding and short-run tables (see the module docstring)."""
    data = _shapes_subset(max(steps * batch_size, quality_train), 500)
    print(f"\nTraining throughput, batch {batch_size}, median of {repeats} alternating rounds of {steps} minibatches, "
          f"112x112 images, decoder H=128\n")
    print("| cell | plain loop (img/s) | ours (img/s) | speed-up | rounds' speed-ups |")
    print("|---|---:|---:|---:|---:|")
    for cell in cells:
        plain, ours, rounds = training_images_per_second(data, cell, steps, batch_size, repeats)
        spread = f"{min(rounds):.2f}x-{max(rounds):.2f}x"
        print(f"| {cell} | {plain:.0f} | {ours:.0f} | {ours / plain:.2f}x | {spread} |", flush=True)

    print("\nDecoding throughput, float32, eval mode, 256 val images in batches of 64\n")
    print("| cell | greedy (captions/s) | beam 3 (captions/s) |")
    print("|---|---:|---:|")
    for cell in cells:
        greedy = decoding_captions_per_second(data, cell, beam_size=1)
        beam = decoding_captions_per_second(data, cell, beam_size=3)
        print(f"| {cell} | {greedy:.0f} | {beam:.0f} |", flush=True)

    if quality_epochs > 0:
        small = {k: (v[:quality_train] if k.startswith("train_") else v) for k, v in data.items()}
        print(f"\nShort runs, {quality_train} train images x {quality_epochs} epochs, seeds 0..{quality_seeds - 1} "
              f"(each seed: the same start and order for both loops), val metrics (greedy), mean over the seeds\n")
        print("| cell | loop | train time (s) | val loss (each seed) | BLEU-4 | CIDEr-D |")
        print("|---|---|---:|---:|---:|---:|")
        for cell in cells:
            runs = {False: [], True: []}
            for seed in range(quality_seeds):  # the loops take turns, as above
                for fast in (False, True):
                    runs[fast].append(short_run_metrics(small, cell, fast, quality_epochs, batch_size, seed))
            for fast, results in runs.items():
                mean = {key: statistics.mean(r[key] for r in results) for key in results[0]}
                each = " / ".join(f"{r['val_loss']:.1f}" for r in results)
                loop = "ours" if fast else "plain"
                print(f"| {cell} | {loop} | {mean['seconds']:.0f} | {mean['val_loss']:.2f} ({each}) | "
                      f"{mean['bleu4']:.3f} | {mean['cider']:.3f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helper.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["recurrent", "training"], help="which benchmark to run")
    parser.add_argument("--repeats", type=int, default=7, help="recurrent: timed repetitions; the median is reported")
    parser.add_argument("--cells", nargs="+", default=["rnn", "lstm", "attn"], choices=["rnn", "lstm", "attn"])
    parser.add_argument("--steps", type=int, default=10, help="training: timed minibatches per round")
    parser.add_argument("--rounds", type=int, default=5, help="training: alternating timed rounds per loop (median)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quality-train", type=int, default=4000, help="training: images of the short runs")
    parser.add_argument("--quality-epochs", type=int, default=3, help="training: epochs of the short runs (0: skip)")
    parser.add_argument("--quality-seeds", type=int, default=3, help="training: seeds of the short runs (mean)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_description()}")
    if args.what == "recurrent":
        rows = bench_recurrent(repeats=args.repeats)
        print_table("Recurrent layers, N=256, T=16, D=256, H=512, float32, CPU", rows)
    else:
        bench_training(args.cells, args.steps, args.batch_size, args.quality_train, args.quality_epochs, args.rounds,
                       args.quality_seeds)


if __name__ == "__main__":
    main()
