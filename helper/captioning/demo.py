"""
The main job: train the three decoders on one data set, evaluate them, and
write a report.

    python -m helper.demo                      # "shapes", defaults of the machine
    python -m helper.demo --out runs/demo --cells attn -- --epochs 2

Each cell type trains with `helper.train` (its defaults suit the machine:
on a CPU, two epochs of the decoder on the frozen features of the encoder
pretrained on "shapes") into OUT/<cell>/, and OUT/report.md gets a markdown
table of the validation metrics and times of the three runs, the loss
curves (OUT/loss.png) and each run's samples.png. Options after `--` go to
every `helper.train` run. The encoder is pretrained once before the runs
(or read from its cache), and a frozen encoder's features are computed once
for all three (OUT/features.pt).
"""
import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from helper.captioning.checkpoint import load_checkpoint, loss_history
from helper.captioning.config import RunConfig
from helper.captioning.config import build_parser as build_train_parser
from helper.captioning.plotting import plot_loss_curves
from helper.captioning.processes import Processes
from helper.captioning.run import pretrained_for_run, train
from helper.common.cli import run_command
from helper.common.files import atomic_output
from helper.common.utils import pick_device
from helper.data.datasets import load_dataset
from helper.dev.machine import machine_description

CELL_NAMES = {"rnn": "vanilla RNN", "lstm": "LSTM", "attn": "attention LSTM"}


def run_demo(out: Path, cells: Sequence[str], data_name: str, train_options: Sequence[str] = ()) -> Path:
    """
    Train and evaluate each cell type, then write the report.

    Inputs:
    - out: the output folder
    - cells: cell types to train, e.g. ["rnn", "lstm", "attn"]
    - data_name: "shapes", "coco" or a data file
    - train_options: more options for every helper.train run

    Returns:
    - the path of the report
    """
    data = load_dataset(data_name)
    train_options = list(train_options)
    args = build_train_parser().parse_args(["--cell", cells[0], "--data", data_name, "--out", str(out), *train_options])
    config = RunConfig.from_args(args, pick_device(args.device))
    if config.freeze_encoder and config.feature_cache is None:
        train_options += ["--feature-cache", str(out / "features.pt")]  # one encoding for the three runs
    pretraining = None
    if config.encoder == "shapes":
        print("\n== the encoder, pretrained on the training images of shapes", flush=True)
        pretraining = pretrained_for_run(data, config, Processes(device=pick_device(args.device)))
    results = {}
    for cell in cells:
        argv = ["--cell", cell, "--data", data_name, "--out", str(out / cell), "--force", *train_options]
        print(f"\n== {CELL_NAMES[cell]}: python -m helper.train {' '.join(argv)}", flush=True)
        results[cell] = train(argv, data=data)
    return write_report(out, results, data_name, pretraining)


def write_report(out: Path, results: Dict[str, dict], data_name: str, pretraining: Optional[dict] = None) -> Path:
    """
    OUT/report.md and OUT/loss.png from the runs' metrics.

    Inputs:
    - out: the output folder, holding one run folder per cell type
    - results: cell type -> the run's metrics.json contents
    - data_name: what the runs trained on
    - pretraining: the encoder pretrained on shapes that the runs started
      from (see pretrained_shapes_encoder), or None

    Returns:
    - the path of the report
    """
    losses = {CELL_NAMES[cell]: loss_history(load_checkpoint(out / cell / "last.pt")) for cell in results}
    plot_loss_curves(losses, smooth=20, path=out / "loss.png", title=f"Training loss on {data_name}")

    lines = [
        f"# Captioning demo on {data_name}",
        "",
        f"Machine: {machine_description()}.",
        *([pretraining_line(pretraining)] if pretraining is not None else []),
        "Validation metrics of the best epoch (greedy decoding; CIDEr-D and BLEU from pycocoevalcap over all",
        "references of each image; exact: share of images whose caption equals one of its references;",
        "grounding: share of object words whose attention peak lies on the named object).",
        "",
        *metrics_table(results),
        "",
        "![training loss](loss.png)",
        "",
    ]
    for cell in results:
        lines += [f"## {CELL_NAMES[cell]}", "", f"![{cell} samples]({cell}/samples.png)", ""]
    report = out / "report.md"
    with atomic_output(report) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"\nwrote {report}")
    return report


def pretraining_line(pretraining: dict) -> str:
    """What the encoder that the runs started from was pretrained on, and how long it took when it was made."""
    config, report = pretraining["config"], pretraining["report"]
    return (
        f"The encoder was pretrained on the first {config['images']} training images of shapes for "
        f"{config['epochs']} epochs ({report['seconds'] / 60:.1f} min when it was made; "
        f"{report['cells_right']:.1%} of grid cells labelled right at the end)."
    )


def metrics_table(results: Dict[str, dict]) -> List[str]:
    """The markdown table of the report: one row per run."""
    rows = [
        "| decoder | epochs | train time | images/s | BLEU-1 | BLEU-4 | CIDEr-D | exact | grounding |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell, result in results.items():
        m, timing = result["metrics"], result["timing"]
        grounding = m.get("grounding")  # None for rnn and lstm, nan when no word named an object
        rows.append(
            f"| {CELL_NAMES[cell]} | {result['epochs_done']} | {timing['train_seconds'] / 60:.1f} min "
            f"| {timing['images_per_second']:.0f} | {m['bleu1']:.3f} | {m['bleu4']:.3f} | {m['cider']:.3f} "
            f"| {m['exact']:.1%} | {'-' if grounding is None or math.isnan(grounding) else f'{grounding:.1%}'} |"
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helper.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--data", default="shapes", help="shapes, coco or a data file (default shapes)")
    parser.add_argument("--cells", nargs="+", default=list(CELL_NAMES), choices=list(CELL_NAMES))
    parser.add_argument("train_options", nargs="*", help="options for every helper.train run, after --")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    def demo(args):
        return run_demo(args.out, args.cells, args.data, args.train_options)

    return run_command(build_parser(), demo, argv)


if __name__ == "__main__":
    sys.exit(main())
