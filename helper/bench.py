"""
Benchmarks, run as `python -m helper.bench recurrent`.

- recurrent: forward + backward time of the module's RNN, LSTM and attention
  LSTM against PyTorch's own layers (torch.nn.RNN, torch.nn.LSTM) measured in
  the same process on the same inputs, and the ratio between them.

Figures are printed, never asserted: timings on shared machines are noisy.
Each timing is the median of several repetitions after a warm-up.
"""
import argparse
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import nn


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


def machine_description() -> str:
    """One line naming the machine, for the figures in the README."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {device}, torch {torch.__version__}"


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helper.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["recurrent"], help="which benchmark to run")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions; the median is reported")
    args = parser.parse_args(argv)
    print(f"machine: {machine_description()}")
    if args.what == "recurrent":
        rows = bench_recurrent(repeats=args.repeats)
        print_table("Recurrent layers, N=256, T=16, D=256, H=512, float32, CPU", rows)


if __name__ == "__main__":
    main()
