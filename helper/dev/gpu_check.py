"""
One check of everything that runs on a GPU, as `python -m helper.gpu_check --out DIR`
(`make gpu-check`), written to DIR/report.md and DIR/report.json.

    python -m helper.gpu_check --out runs/gpu-check                 # on a GPU machine
    python -m helper.gpu_check --device cpu --out runs/gpu-check    # the same steps, tiny, on the CPU

Its steps, in order:
1. the machine: GPU name, torch, CUDA and cuDNN versions;
2. the module's API pieces (the contract's functions and modules) on the
   device against the CPU, same inputs, float32 and float64;
3. the grading tests (tests/grading) in a subprocess, their worker without the
   sandbox (which shows it no GPU); they have no device
   option and run on the CPU, except the sample test that also runs on CUDA
   where there is a GPU; step 2 is their CUDA-vs-CPU counterpart;
4. the notebook under nbval in a subprocess: on a GPU machine the notebook
   picks CUDA itself (pick_device("auto"));
5. each decoder trained by helper.train with the GPU defaults (the encoder
   training too) on the built-in "shapes" data for a fixed number of epochs:
   images/s, peak memory, BLEU-4, CIDEr-D, exact matches;
6. the training benchmark (the assignment's plain loop against ours) and the
   decoding speed, on the device (helper.dev.gpu_compare holds steps 2 and 6 and the
   report's layout).

With --device cpu (the default size there is "tiny") every step runs the
same code at a small size, so that the script cannot rot while no GPU is
available; the notebook is then only collected by nbval, not run, and the
report says on every figure that it was measured on the CPU.
"""
import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from helper.captioning.config import CELLS, DEVICE_DEFAULTS
from helper.captioning.run import train
from helper.common.cli import run_command
from helper.common.files import atomic_output
from helper.common.utils import pick_device
from helper.data.storage import default_data_dir
from helper.dev.gpu_compare import bench_on_device, compare_api, render_markdown
from helper.dev.machine import machine_description

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "rnn_lstm_captioning.ipynb"

# What each step does at each size. "full" is meant for a few minutes on one
# GPU; "tiny" is the CPU dry run of CI (the captioning model compared for
# "attn" alone, the grading step: the test of sampling on each device only).
SIZES = {
    "full": {"api_cells": ("rnn", "lstm", "attn"), "api_images": 4, "grading_filter": None, "run_notebook": True,
             "train_images": None, "val_images": None, "epochs": 5, "batch_size": None,
             "bench_steps": 10, "bench_rounds": 5, "bench_batch": 256, "decode_images": 1000, "shapes": {}},
    "tiny": {"api_cells": ("attn",), "api_images": 2, "grading_filter": "images_device", "run_notebook": False,
             "train_images": 32, "val_images": 16, "epochs": 1, "batch_size": 16,
             "bench_steps": 1, "bench_rounds": 1, "bench_batch": 16, "decode_images": 16,
             "shapes": {"num_train": 64, "num_val": 16}},
}


def machine(device: torch.device) -> Dict[str, Optional[str]]:
    """
    Returns:
    - the device, the GPU's name (None on the CPU), torch, CUDA (the build's)
      and cuDNN versions, and the CPU's description
    """
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if cuda else None,
        "python": platform.python_version(),
        "cpu": machine_description(),
    }


def run_pytest(args: Sequence[str], timeout: float) -> Dict[str, object]:
    """
    Run pytest in a subprocess (this Python, the repo as working folder)
    and count its outcomes from a JUnit XML file.

    Inputs:
    - args: pytest's arguments
    - timeout: seconds before the run is stopped

    Returns:
    - dict: command, returncode, seconds, passed, failed, errors, skipped,
      failures (names of the failed tests, at most 20), tail (the output's
      last lines)
    """
    with tempfile.TemporaryDirectory() as folder:
        xml = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            returncode, output = None, f"stopped after {timeout:.0f} s\n{error.stdout or ''}"
        result = {"command": " ".join(["python", "-m", "pytest", *args]), "returncode": returncode,
                  "seconds": time.perf_counter() - start, "passed": 0, "failed": 0, "errors": 0, "skipped": 0,
                  "failures": [], "tail": "\n".join(str(output).strip().splitlines()[-15:])}
        cases = ElementTree.parse(xml).getroot().iter("testcase") if xml.is_file() else []
        for case in cases:
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            key = {"failure": "failed", "error": "errors"}.get(outcome, outcome)
            result[key] += 1
            if key in ("failed", "errors") and len(result["failures"]) < 20:
                result["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    return result


def grading_tests(size: dict) -> Dict[str, object]:
    """Step 3: tests/grading, all of them or those matching the size's filter."""
    # Without the sandbox: the worker must see the GPU (the sandbox shows it none), and the module is ours.
    args = ["-q", "--sandbox", "off", "tests/grading"] + (["-k", size["grading_filter"]] if size["grading_filter"] else [])
    return {**run_pytest(args, timeout=300), "filter": size["grading_filter"]}


def notebook_under_nbval(size: dict) -> Dict[str, object]:
    """Step 4: the notebook under nbval (only collected at the tiny size)."""
    args = ["-q", "--nbval-current-env", "--nbval", str(NOTEBOOK.relative_to(REPO))]
    result = run_pytest(args + ([] if size["run_notebook"] else ["--collect-only"]), timeout=360)
    collected = re.search(r"(\d+) tests? collected", result["tail"])
    return {**result, "executed": size["run_notebook"], "collected": int(collected.group(1)) if collected else None}


def peak_memory(device: torch.device) -> Dict[str, object]:
    """The peak memory since the last reset: CUDA's allocator on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "memory_kind": "CUDA allocator peak"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"peak_memory_mb": rss_kb / 1024, "memory_kind": "peak RSS of the whole process (CPU)"}


def train_decoders(device: torch.device, size: dict, out: Path, data: dict) -> List[Dict[str, object]]:
    """
    Step 5: helper.train for each cell type with the GPU defaults (the encoder
    training too), for the size's epochs, no time budget.

    Returns:
    - one dict per cell type: cell, epochs, seconds, images_per_second,
      peak memory, bleu4, cider, exact, and the options of the run
    """
    gpu = DEVICE_DEFAULTS["cuda"]
    options = ["--data", "shapes", "--device", str(device), "--epochs", str(size["epochs"]), "--minutes", "0",
               "--no-progress", "--no-freeze-encoder", "--lr", str(gpu["learning_rate"]),
               "--lr-decay", str(gpu["lr_decay"]), "--batch-size", str(size["batch_size"] or gpu["batch_size"])]
    for flag in ("train_images", "val_images"):
        if size[flag]:
            options += [f"--{flag.replace('_', '-')}", str(size[flag])]
    rows = []
    for cell in CELLS:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        argv = ["--cell", cell, "--out", str(out / "train" / cell), "--force", *options]
        result = train(argv, data=data)
        metrics, timing = result["metrics"], result["timing"]
        rows.append({
            "cell": cell, "epochs": result["epochs_done"], "train_seconds": timing["train_seconds"],
            "images_per_second": timing["images_per_second"], **peak_memory(device),
            "bleu4": metrics["bleu4"], "cider": metrics["cider"], "exact": metrics["exact"],
            "command": "python -m helper.train " + " ".join(argv),
        })
    return rows


def load_shapes_for(size: dict) -> dict:
    """The built-in data set at the size's scale (generated on first use, cached in the data folder)."""
    from helper.data.shapes import load_shapes

    return load_shapes(**size["shapes"])


def run_check(device_name: str, out: Path, size_name: Optional[str] = None) -> Dict[str, object]:
    """
    Run every step and write out/report.json and out/report.md.

    Inputs:
    - device_name: "cuda", "cuda:1", "cpu", ...
    - out: the output folder
    - size_name: "full" or "tiny"; None for full on CUDA, tiny elsewhere

    Returns:
    - the report's dict

    Raises ValueError when CUDA is asked for and there is none.
    """
    device = pick_device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device_name}: no CUDA device here; --device cpu runs the tiny dry run")
    size_name = size_name or ("full" if device.type == "cuda" else "tiny")
    size = SIZES[size_name]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"measured_on": device.type, "size": size_name, "machine": machine(device), "steps_seconds": {}}

    def step(name, function, *args):
        start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        report[name] = function(*args)
        report["steps_seconds"][name] = time.perf_counter() - start
        print(f"[gpu_check] {name}: {report['steps_seconds'][name]:.0f} s", flush=True)

    step("api", compare_api, device, size["api_cells"], size["api_images"])
    step("grading", grading_tests, size)
    step("notebook", notebook_under_nbval, size)
    data = load_shapes_for(size)
    step("training", train_decoders, device, size, out, data)
    step("bench", bench_on_device, data, device, size)
    report["total_seconds"] = time.perf_counter() - started
    report["data_dir"] = str(default_data_dir())
    with atomic_output(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(render_markdown(report))
    print(f"[gpu_check] wrote {out / 'report.md'} and {out / 'report.json'} in {report['total_seconds']:.0f} s")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helper.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where report.md and report.json go")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, ..., or cpu for the tiny dry run")
    p.add_argument("--size", choices=sorted(SIZES), help="full (default on CUDA) or tiny (default on the CPU)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), lambda args: run_check(args.device, args.out, args.size), argv)


if __name__ == "__main__":
    raise SystemExit(main())
