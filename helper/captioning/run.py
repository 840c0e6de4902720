"""
Train a captioning model from the command line.

    python -m helper.train --cell attn --data shapes --out runs/attn
    python -m helper.train --out runs/attn --resume          # after Ctrl-C, or to train longer
    torchrun --nproc_per_node=2 -m helper.train --cell lstm --out runs/lstm

Every epoch trains on the training split (progress bar: images, images/s,
time left, loss), captions the validation images greedily and scores them
(BLEU-1..4, CIDEr-D; on "shapes" also the attention grounding of "attn"),
and writes to the output folder:
- last.pt: the latest checkpoint (helper/captioning/checkpoint.py), best.pt: the one
  with the best validation CIDEr-D so far;
- metrics.json: the best epoch's metrics, every epoch's record and timings;
- samples.png (at the end): validation images with generated and reference
  captions, and for "attn" the attention map behind every word.

Runs are deterministic from --seed: an epoch's order is drawn from (seed,
epoch) alone, so a resumed run (`--resume`, also after Ctrl-C or kill, from
the last checkpoint, even mid-epoch) continues exactly as if never stopped.
The first Ctrl-C (or SIGTERM) finishes the current step, saves last.pt and
exits; a second Ctrl-C stops at once (last.pt then holds the previous
epoch; checkpoints are written atomically, so it is always loadable).

`--freeze-encoder` computes the encoder's features of all images once (eval
mode, no gradients) and trains the decoder alone from them (see
helper.captioning.training.FeatureLookup); `--feature-cache FILE` also keeps them on
disk for the next run with the same encoder and images.

Distributed: under torchrun (RANK / WORLD_SIZE in the environment) every
process trains a DistributedDataParallel replica (gloo on CPU, nccl on
CUDA) on its shard of every global minibatch of --batch-size examples;
only rank 0 evaluates and writes files. The result matches one process with
the same global batch up to floating-point rounding, except for batch
normalisation in the encoder: each process normalises with the statistics
of its own shard. `--sync-bn` (CUDA only) synchronises them; or use
--freeze-encoder, which keeps the encoder in eval mode.
"""
import argparse
import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.checkpoint import build_model, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from helper.captioning.decoding import decode_captions, generate_captions
from helper.captioning.metrics import evaluate_captions, exact_match
from helper.captioning.parts import model_parts, unwrap_model
from helper.captioning.plotting import plot_samples
from helper.captioning.training import (
    FeatureLookup,
    autocast,
    encode_images,
    epoch_order,
    fold_standardisation,
    index_images,
    make_optimizer,
    mixed_precision,
    prepare_model,
    standardise_features,
    swap_image_encoder,
    train_epoch,
    unfold_standardisation,
)
from helper.common.cli import run_command
from helper.common.files import atomic_output, write_json
from helper.common.utils import pick_device, reset_seed
from helper.data.datasets import DATASET_NAMES, load_dataset
from helper.data.format import NULL, references_by_image

CELLS = ("rnn", "lstm", "attn")
ENCODER_CHANNELS = 400  # c5 of RegNetX-400MF

# ---------------------------------------------------------------------------
# Defaults: the one place to tune them.
#
# DEVICE_DEFAULTS depend on the hardware: on 2 CPU cores a default run on
# "shapes" of any cell type must finish within 5 minutes. There the decoder
# trains alone, on standardised features of the frozen encoder computed once
# (~36 s for the 31,000 images); an epoch of the 30,000 training captions
# then takes 12-15 s for "attn" and less for the others. Measured on the
# project's 2-core AMD EPYC: 12 epochs at lr 1e-3 (2e-3 diverged on
# standardised features) give the attention model's best validation captions
# within the budget. The time budget ("minutes") ends a run early on a
# slower machine: on a 2-core EPYC with AVX2 alone (no bfloat16 kernels) the
# encoding takes ~150 s and the runs stop after 1-3 (attn) to 8 (rnn) epochs.

DEFAULTS = {
    "data": "shapes",
    "wordvec_dim": 128,
    "hidden_dim": 256,
    "seed": 0,
    "freeze_encoder": False,
    "pretrained": False,
    "fast": True,
    "sync_bn": False,
    "train_images": None,
    "val_images": None,
    "eval_batch_size": 250,
    "samples": 6,
    "feature_cache": None,
    "progress": True,
}
DEVICE_DEFAULTS = {
    # On 2 CPU cores, training the encoder too gets through only a few epochs
    # in 5 minutes, and its captions are still poor; the decoder alone, on
    # the features of the (frozen) encoder computed once, trains 6x (attn) to
    # 16x (rnn) more images per second.
    "cpu": {"epochs": 12, "batch_size": 50, "learning_rate": 1e-3, "lr_decay": 0.9, "minutes": 4.5,
            "freeze_encoder": True},
    "cuda": {"epochs": 30, "batch_size": 256, "learning_rate": 2e-3, "lr_decay": 0.95, "minutes": None,
             "freeze_encoder": False},
}
# What defines a run: --resume refuses to change these (the others, such as
# --epochs, may change to train longer or elsewhere).
RUN_KEYS = (
    "cell", "data", "wordvec_dim", "hidden_dim", "batch_size", "learning_rate", "lr_decay",
    "seed", "freeze_encoder", "pretrained", "fast", "sync_bn", "train_images",
)
CONFIG_KEYS = RUN_KEYS + (
    "epochs", "minutes", "val_images", "eval_batch_size", "samples", "feature_cache", "progress",
)
# Files a run writes into its output folder.
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "samples.png")


# ---------------------------------------------------------------------------
# Options


def _positive(kind, zero: bool = False):
    """An argparse type: a number of the given kind, > 0 (>= 0 with zero=True)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}; got {text!r}")
        if not (value > 0 or zero and value == 0):
            raise argparse.ArgumentTypeError(f"expected a value {'>=' if zero else '>'} 0; got {text!r}")
        return value

    return parse


def by_device(key: str) -> str:
    """The defaults of a device-dependent option, for --help: e.g. "cpu: 3, cuda: 30"."""
    return ", ".join(f"{device}: {defaults[key]}" for device, defaults in DEVICE_DEFAULTS.items())


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.train` (unset options are None)."""
    p = argparse.ArgumentParser(
        prog="python -m helper.train",
        description="Train an RNN, LSTM or attention-LSTM captioning model; see the module docstring.",
    )
    count, number, flag = _positive(int), _positive(float), {"action": "store_true", "default": None}
    d = DEFAULTS

    run = p.add_argument_group("the run")
    run.add_argument("--cell", choices=CELLS, help="decoder cell type (required for a new run)")
    run.add_argument("--data", metavar="NAME|FILE", help=f"{' or '.join(DATASET_NAMES)}, or a .pt/.h5 file ({d['data']})")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder of the run")
    occupied = run.add_mutually_exclusive_group()
    occupied.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    occupied.add_argument("--force", "--overwrite", action="store_true", help="start anew where --out holds a run")

    length = p.add_argument_group("how long")
    length.add_argument("--epochs", type=count, metavar="N", help=f"passes over the data ({by_device('epochs')})")
    length.add_argument(
        "--minutes", type=_positive(float, zero=True), metavar="M",
        help=f"time budget, 0 for none: start no epoch that would end later ({by_device('minutes')})",
    )
    length.add_argument("--train-images", type=count, metavar="N", help="train on the first N distinct images (all)")

    model = p.add_argument_group("model and optimisation")
    model.add_argument("--hidden-dim", type=count, metavar="H", help=f"decoder hidden size ({d['hidden_dim']})")
    model.add_argument("--wordvec-dim", type=count, metavar="W", help=f"word vector size ({d['wordvec_dim']})")
    model.add_argument("--batch-size", type=count, metavar="B", help=f"global minibatch ({by_device('batch_size')})")
    model.add_argument("--lr", dest="learning_rate", type=number, metavar="LR", help=f"AdamW ({by_device('learning_rate')})")
    model.add_argument("--lr-decay", type=number, metavar="F", help=f"learning-rate factor per epoch ({by_device('lr_decay')})")
    model.add_argument("--seed", type=int, metavar="S", help=f"random seed ({d['seed']})")
    model.add_argument("--pretrained", **flag, help="encoder from ImageNet weights (offline: cached file needed)")
    model.add_argument(
        "--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
        help=f"train the decoder alone, on cached encoder features ({by_device('freeze_encoder')})",
    )
    model.add_argument("--feature-cache", type=Path, metavar="FILE", help="--freeze-encoder: keep the features here")

    hardware = p.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    hardware.add_argument("--no-fast", dest="fast", action="store_false", default=None, help="plain float32 loop")
    hardware.add_argument("--sync-bn", **flag, help="distributed on CUDA: synchronise batch-norm statistics")

    report = p.add_argument_group("evaluation and output")
    report.add_argument("--val-images", type=count, metavar="N", help="validate on the first N distinct images (all)")
    report.add_argument("--eval-batch-size", type=count, metavar="B", help=f"images captioned at once ({d['eval_batch_size']})")
    report.add_argument("--samples", type=count, metavar="N", help=f"images in samples.png ({d['samples']})")
    report.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    return p


def _normalise_data(data: str) -> str:
    """A data set's name as given, a file's as an absolute path (so that runs compare from any folder)."""
    return data if data in DATASET_NAMES else str(Path(data).resolve())


def resolve_config(args: argparse.Namespace, device: torch.device, saved: Optional[dict] = None) -> dict:
    """
    The run's configuration: the options given, over the saved run's
    configuration when resuming, over the defaults.

    Inputs:
    - args: parsed options (None where not given)
    - device: where training runs (picks DEVICE_DEFAULTS)
    - saved: the configuration of the run being resumed, or None

    Returns:
    - config: dict over CONFIG_KEYS

    Raises ValueError when a new run has no --cell, or when a resumed run
    is given options that would change what defines it.
    """
    given = {key: getattr(args, key) for key in CONFIG_KEYS if getattr(args, key, None) is not None}
    if "data" in given:
        given["data"] = _normalise_data(given["data"])
    if "feature_cache" in given:
        given["feature_cache"] = str(given["feature_cache"])
    if saved is not None:
        changed = {
            key: (saved.get(key), value) for key, value in given.items() if key in RUN_KEYS and saved.get(key) != value
        }
        if changed:
            listed = ", ".join(f"{key}: run has {old!r}, given {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"--resume cannot change what defines the run in {args.out} ({listed}); use another --out")
        merged = {**DEFAULTS, **saved, **given}  # DEFAULTS: for options newer than the run
        return {key: merged[key] for key in CONFIG_KEYS}
    if "cell" not in given:
        raise ValueError(f"--cell is required for a new run: one of {', '.join(CELLS)}")
    config = {**DEFAULTS, **DEVICE_DEFAULTS.get(device.type, DEVICE_DEFAULTS["cpu"]), **given}
    config["data"] = _normalise_data(config["data"])
    return {key: config[key] for key in CONFIG_KEYS}


def check_output_dir(out: Path, resume: bool, force: bool) -> Optional[dict]:
    """
    Make sure --out may be written, and read the run to resume.

    Inputs:
    - out: the output folder
    - resume: --resume was given
    - force: --force was given

    Returns:
    - the checkpoint of out/last.pt when resuming, else None

    Raises FileExistsError for a folder that holds another run (without
    --resume or --force) or other files (without --force), and
    FileNotFoundError for --resume without a run to resume.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"nothing to resume: no checkpoint {last}; start a new run without --resume")
        return load_checkpoint(last)
    if force or not out.exists():
        return None
    if last.is_file():
        try:
            what = describe_run(load_checkpoint(last))
        except ValueError:
            what = "a checkpoint this code cannot read"
        raise FileExistsError(
            f"{out} already holds a run ({what}); pass --resume to continue it, --force to start anew "
            f"(overwriting it), or choose another --out"
        )
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and ".tmp" not in p.name)
    if others:
        raise FileExistsError(
            f"{out} is not empty ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) and holds no run; "
            f"choose an empty or new folder, or pass --force to write there anyway"
        )
    return None


def describe_run(checkpoint: dict) -> str:
    """One line about a run's checkpoint, for messages."""
    config = checkpoint.get("config", {})
    return (
        f"cell {config.get('cell')}, data {config.get('data')}, H={config.get('hidden_dim')}, "
        f"{checkpoint.get('epoch')} of {config.get('epochs')} epochs done"
    )


# ---------------------------------------------------------------------------
# Processes: one, or several under torchrun


@dataclass
class Processes:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates and writes the files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def _where(self) -> torch.device:
        """Where collectives' tensors live: nccl reduces CUDA tensors only, gloo CPU ones."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _flag(self, value: float) -> torch.Tensor:
        return torch.tensor([float(value)], device=self._where)

    def any(self, flag: bool) -> bool:
        """Whether flag is true in any process (collective)."""
        if not self.distributed:
            return flag
        tensor = self._flag(flag)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def from_main(self, flag: bool) -> bool:
        """Rank 0's flag, in every process (collective)."""
        if not self.distributed:
            return flag
        tensor = self._flag(flag)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def mean(self, total: float, count: int) -> float:
        """The mean over all processes of values whose local sum and count are given (collective)."""
        if self.distributed:
            tensor = torch.tensor([total, float(count)], dtype=torch.float64, device=self._where)
            dist.all_reduce(tensor)
            total, count = tensor.tolist()
        return total / count if count else math.nan

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start_processes(device_name: str) -> Processes:
    """
    Join the process group when started by torchrun (WORLD_SIZE > 1 in the
    environment): nccl with one GPU per process on CUDA, gloo on CPU.

    Inputs:
    - device_name: --device

    Returns:
    - this process's Processes
    """
    device = pick_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes(device=device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


def stop_processes(processes: Processes) -> None:
    """Leave the process group, if any."""
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


class GracefulStop:
    """
    While active, the first Ctrl-C (SIGINT) or SIGTERM only asks training to
    stop after the current step (so that the saved state is consistent); a
    second Ctrl-C interrupts at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self):
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# ---------------------------------------------------------------------------
# Data and cached features


def unique_rows(image_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Inputs:
    - image_ids: int64 (N,), rows with the same id show the same image

    Returns a tuple of:
    - first: int64 (M,), the first row of each distinct image
    - image_of_row: int64 (N,), the index in first of each row's image
    """
    ids, image_of_row = torch.unique(image_ids, return_inverse=True)
    rows = torch.arange(len(image_ids))
    first = torch.full((len(ids),), len(image_ids)).scatter_reduce(0, image_of_row, rows, "amin")
    return first, image_of_row


def split_arrays(data: dict, split: str, max_images: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """
    One split's tensors without the split prefix (images, captions,
    image_ids and, when present, boxes and word_objects).

    Inputs:
    - data: the data dict (helper.data)
    - split: "train" or "val"
    - max_images: keep the rows of the first max_images distinct images

    Returns:
    - dict of tensors with one row per caption
    """
    arrays = {
        key: data[f"{split}_{key}"]
        for key in ("images", "captions", "image_ids", "boxes", "word_objects")
        if f"{split}_{key}" in data
    }
    if max_images is not None:
        first_rows, _ = references_by_image(arrays["image_ids"], arrays["captions"])
        keep = torch.isin(arrays["image_ids"], arrays["image_ids"][first_rows[:max_images]])
        arrays = {key: value[keep] for key, value in arrays.items()}
    return arrays


def _fingerprint(encoder: nn.Module, image_sets: Sequence[torch.Tensor], amp_dtype) -> str:
    """A hash of what cached features depend on: encoder weights, images, precision."""
    digest = hashlib.sha1(str(amp_dtype).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for images in image_sets:
        digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_table(
    encoder: nn.Module,
    splits: Sequence[Dict[str, torch.Tensor]],
    device: torch.device,
    amp_dtype,
    channels_last: bool,
    batch_size: int,
    cache_path: Optional[Path] = None,
    progress: bool = False,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """
    The encoder's features of every distinct image of the splits, computed
    once (or read from cache_path when it was made from the same encoder
    weights, images and precision).

    Inputs:
    - encoder: the ImageEncoder, on device
    - splits: dicts with "images" (N_s, 3, H, W) and "image_ids" (N_s,)
    - device, amp_dtype, channels_last, batch_size: how to run the encoder
    - cache_path: file to read the table from, or to write it to
    - progress: show a progress bar

    Returns a tuple of:
    - table: float32 (M, D, Da, Da), M distinct images of all splits
    - rows: for each split, int64 (N_s,), the row of the table for each row
    """
    firsts, rows, offset = [], [], 0
    for split in splits:
        first, image_of_row = unique_rows(split["image_ids"])
        firsts.append(split["images"][first])
        rows.append(image_of_row + offset)
        offset += len(first)
    fingerprint = _fingerprint(encoder, firsts, amp_dtype) if cache_path is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint:
                return cached["features"], rows
            print(f"{cache_path} holds features of another encoder or data; computing them anew", file=sys.stderr)
        except Exception as error:  # a damaged file is replaced, never used
            print(f"{cache_path} cannot be read ({error}); computing the features anew", file=sys.stderr)
    table = torch.cat(
        [encode_images(encoder, images, batch_size, device, amp_dtype, channels_last, progress) for images in firsts]
    )
    if cache_path is not None:
        with atomic_output(cache_path) as tmp:
            torch.save({"fingerprint": fingerprint, "features": table}, tmp)
    return table, rows


# ---------------------------------------------------------------------------
# Model, evaluation, outputs


def model_config(config: dict) -> dict:
    """The arguments of CaptioningRNN (besides the vocabulary) for a run."""
    return {
        "input_dim": ENCODER_CHANNELS,
        "wordvec_dim": config["wordvec_dim"],
        "hidden_dim": config["hidden_dim"],
        "cell_type": config["cell"],
        "ignore_index": NULL,
    }


def new_model(config: dict, vocab: dict, pretrained: bool) -> nn.Module:
    """
    A fresh CaptioningRNN for the run (rnn_lstm_captioning as imported now).

    Raises ValueError when pretrained weights were asked for and cannot be
    had (offline, no cached file).
    """
    import rnn_lstm_captioning

    try:
        return rnn_lstm_captioning.CaptioningRNN(
            vocab["token_to_idx"], image_encoder_pretrained=pretrained, **model_config(config)
        )
    except RuntimeError as error:
        if pretrained:  # the module says which file to put where
            raise ValueError(f"--pretrained: {error}") from error
        raise


def evaluate(model: nn.Module, val: Dict[str, torch.Tensor], vocab: dict, config: dict, device, amp_dtype) -> dict:
    """
    Greedy captions of the validation images, scored, in the training's
    precision (amp_dtype autocast).

    Returns:
    - metrics: bleu1..bleu4, cider, exact (see exact_match), and grounding
      for "attn" on data with grounding data
    """
    with autocast(device, amp_dtype):
        result = evaluate_captions(
            unwrap_model(model), val["images"], val["captions"], val["image_ids"], vocab["idx_to_token"],
            batch_size=config["eval_batch_size"], device=device,
            boxes=val.get("boxes"), word_objects=val.get("word_objects"),
        )
    return {**result["metrics"], "exact": exact_match(result)}


def write_samples(checkpoint_path: Path, val: Dict[str, torch.Tensor], vocab: dict, count: int, path: Path, device):
    """
    samples.png: the first `count` distinct validation images, captioned
    greedily by the model of a checkpoint, with their references (and the
    attention maps for "attn").
    """
    model = build_model(load_checkpoint(checkpoint_path)).to(device)
    first_rows, references = references_by_image(val["image_ids"], val["captions"])
    images = val["images"][first_rows[:count]]
    captions, attn_weights = generate_captions(model, images.to(device))
    idx_to_token = vocab["idx_to_token"]
    plot_samples(
        images,
        decode_captions(captions.cpu(), idx_to_token),
        [decode_captions(refs, idx_to_token) for refs in references[:count]],
        attn_weights,
        path=path,
    )


# ---------------------------------------------------------------------------
# Training


def train(argv: Optional[Sequence[str]] = None, data: Optional[dict] = None) -> dict:
    """
    Train as `python -m helper.train` does (see the module docstring).

    Inputs:
    - argv: the command-line options, e.g. ["--cell", "attn", "--out", "runs/attn"]
    - data: the data set, already loaded (skips loading --data)

    Returns:
    - the contents of metrics.json (in rank 0; in other ranks, {})

    Raises the errors of bad input (ValueError, FileNotFoundError,
    FileExistsError), and KeyboardInterrupt after saving last.pt when
    interrupted.
    """
    return train_from_args(build_parser().parse_args(argv), data)


def train_from_args(args: argparse.Namespace, data: Optional[dict] = None) -> dict:
    """train, from parsed options (see build_parser)."""
    started = time.perf_counter()  # the time budget counts loading the data too
    out = args.out
    checkpoint = check_output_dir(out, args.resume, args.force)
    processes = start_processes(args.device)
    try:
        config = resolve_config(args, processes.device, checkpoint["config"] if checkpoint else None)
        if config["sync_bn"] and processes.device.type != "cuda":
            raise ValueError("--sync-bn synchronises batch norm across GPUs; it needs CUDA")
        if config["feature_cache"] is not None and not config["freeze_encoder"]:
            raise ValueError("--feature-cache goes with --freeze-encoder")
        if processes.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if checkpoint is None:  # --force, or a folder without a run: no file of an older run may stay
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
        if data is None:
            data = load_dataset(config["data"])
        return TrainingRun(config, out, processes, data, checkpoint, started).run()
    finally:
        stop_processes(processes)


class TrainingRun:
    """
    One run in one process: the model, its optimiser, the data, and the
    state that checkpoints hold (epoch, step, losses, history, best epoch,
    timings). `run()` trains to the end; the other methods are its steps.
    """

    def __init__(
        self, config: dict, out: Path, processes: Processes, data: dict, checkpoint: Optional[dict], started: float
    ):
        """
        Inputs:
        - config: from resolve_config
        - out: the output folder
        - processes: this process's place in the run
        - data: the data set (helper.data format)
        - checkpoint: the checkpoint to resume from, or None
        - started: time.perf_counter() when the session started
        """
        self.started = started
        self.config, self.out, self.processes, self.device = config, out, processes, processes.device
        self.vocab = data["vocab"]
        if checkpoint is not None and checkpoint["vocab"]["idx_to_token"] != self.vocab["idx_to_token"]:
            raise ValueError(f"the data {config['data']} has another vocabulary than the run in {out}")
        self.train_set = split_arrays(data, "train", config["train_images"])
        self.val = split_arrays(data, "val", config["val_images"])
        self.real_val = dict(self.val)  # samples.png shows real images also when training on cached features

        reset_seed(config["seed"])
        self.model = new_model(config, self.vocab, pretrained=config["pretrained"] and checkpoint is None)
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
        prepare_model(self.model, self.device, config["fast"])
        if config["sync_bn"] and processes.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.amp_dtype, self.scaler = mixed_precision(self.device, config["fast"])
        self.encoder_name, self.encoder = None, None  # set when the encoder is frozen and swapped out
        # Set when the decoder trains on standardised features: the feature
        # projection's name in the model and the (mean, std) it is folded
        # with; see model_weights.
        self.projection_name, self.feature_stats = None, None
        feature_seconds = self._use_cached_features() if config["freeze_encoder"] else 0.0

        self.optimizer, self.scheduler = make_optimizer(
            self.model, config["learning_rate"], config["lr_decay"], fused=config["fast"]
        )
        self.state = {"epoch": 0, "step": 0, "losses": [], "history": [], "best": None, "timing": {}}
        if checkpoint is not None:
            self._restore(checkpoint)
        self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "feature_seconds": 0.0, "images": 0}
        self.timing.update(self.state["timing"])
        self.timing["feature_seconds"] += feature_seconds

        self.net = self.model
        if processes.distributed:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.images, self.captions = self.train_set["images"], self.train_set["captions"]
        if config["fast"] and self.device.type == "cuda" and not config["freeze_encoder"]:
            # One copy of the data beats one per minibatch.
            self.images, self.captions = self.images.to(self.device), self.captions.to(self.device)
        self.steps_per_epoch = math.ceil(len(self.captions) / config["batch_size"])

    def _use_cached_features(self) -> float:
        """
        Freeze the encoder, compute the features of all images once, and put
        a FeatureLookup in the encoder's place; the training and validation
        images become index images.

        Returns:
        - the seconds it took
        """
        start, config, processes = time.perf_counter(), self.config, self.processes
        parts = model_parts(self.model)
        encoder = parts.encoder
        encoder.requires_grad_(False)
        cache = Path(config["feature_cache"]) if config["feature_cache"] else None
        # With a cache file, rank 0 writes it first and the others then read it.
        if cache is not None and not processes.is_main:
            processes.barrier()
        table, (train_rows, val_rows) = feature_table(
            encoder, [self.train_set, self.val], self.device, self.amp_dtype, config["fast"],
            config["eval_batch_size"], cache, progress=config["progress"] and processes.is_main,
        )
        if cache is not None and processes.is_main:
            processes.barrier()
        if parts.feature_proj.bias is not None:  # folding the mean into the projection needs its bias
            table, mean, std = standardise_features(table, train_rows.unique())
            self.projection_name = next(n for n, m in self.model.named_modules() if m is parts.feature_proj)
            self.feature_stats = (mean, std)
        if self.device.type == "cuda":
            table = table.to(self.device)  # look features up where the decoder runs
        self.encoder_name, self.encoder = swap_image_encoder(self.model, FeatureLookup(table))
        self.train_set["images"] = index_images(train_rows)
        # Validation's index images keep the real size: the grounding score reads the boxes' scale from it.
        self.val["images"] = index_images(val_rows, size=self.real_val["images"].shape[-1])
        seconds = time.perf_counter() - start
        self.say(f"encoded {len(table)} images once in {seconds:.1f} s; training the decoder alone")
        return seconds

    def _restore(self, checkpoint: dict) -> None:
        """Take up a checkpoint's optimiser, schedule, random and run state."""
        if self.projection_name is not None:
            # The checkpoint's model holds the feature projection folded for raw
            # features; the run goes on from the unfolded weights it trained,
            # bit for bit, since the optimiser's state belongs to them.
            projection = self.model.get_submodule(self.projection_name)
            saved = checkpoint.get("standardised_projection")
            if saved is None:
                # Written before frozen runs standardised their features: the
                # projection just loaded is for raw features, so unfold it (same model).
                loaded = self.standardised_projection()
                weight, bias = unfold_standardisation(loaded["weight"], loaded["bias"], *self.feature_stats)
                saved = {"weight": weight, "bias": bias}
            with torch.no_grad():
                projection.weight.copy_(saved["weight"])
                projection.bias.copy_(saved["bias"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state.update({key: checkpoint[key] for key in self.state})
        set_rng_state(checkpoint["rng"])

    def say(self, *args, **kwargs) -> None:
        """print, in rank 0 only."""
        if self.processes.is_main:
            print(*args, **kwargs)

    def model_weights(self) -> dict:
        """
        The model's state_dict on the CPU, for raw images: the frozen
        encoder's weights included, and a feature projection trained on
        standardised features folded (see fold_standardisation).
        """
        weights = unwrap_model(self.model).state_dict()
        if self.encoder is not None:
            weights.update({f"{self.encoder_name}.{k}": v for k, v in self.encoder.state_dict().items()})
        weights = {k: v.detach().cpu() for k, v in weights.items()}
        if self.projection_name is not None:  # on the CPU, where the feature statistics are
            name = self.projection_name
            weight, bias = fold_standardisation(weights[f"{name}.weight"], weights[f"{name}.bias"], *self.feature_stats)
            weights.update({f"{name}.weight": weight, f"{name}.bias": bias})
        return weights

    def standardised_projection(self) -> Optional[dict]:
        """The feature projection's own (unfolded) weights, which --resume trains on; None without standardising."""
        if self.projection_name is None:
            return None
        projection = self.model.get_submodule(self.projection_name)
        return {"weight": projection.weight.detach().cpu(), "bias": projection.bias.detach().cpu()}

    def save(self, name: str) -> None:
        """Write the checkpoint out/name (see helper/captioning/checkpoint.py)."""
        save_checkpoint(
            self.out / name,
            {
                "model_config": model_config(self.config),
                "vocab": self.vocab,
                "model": self.model_weights(),
                "standardised_projection": self.standardised_projection(),
                "config": self.config,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(),
                **self.state,
                "timing": self.timing,
            },
        )

    def train_one_epoch(self, bar: tqdm, stop: GracefulStop) -> Tuple[bool, float]:
        """
        Train through the rest of the current epoch, or until a stop request.

        Returns a tuple of:
        - whether the epoch is complete
        - the seconds it took
        """
        config, state, processes = self.config, self.state, self.processes
        epoch, start_step = state["epoch"], state["step"]
        if start_step == 0:
            state["losses"] = state["losses"] + [[]]  # one list of minibatch losses per epoch
        started = time.perf_counter()
        self.net.train()
        losses, state["step"] = train_epoch(
            self.net, self.optimizer, self.images, self.captions, config["batch_size"], self.device,
            order=epoch_order(len(self.captions), True, config["seed"], epoch),
            amp_dtype=self.amp_dtype, scaler=self.scaler, channels_last=config["fast"],
            rank=processes.rank, world_size=processes.world_size, start_step=start_step,
            bar=bar, should_stop=lambda: processes.any(stop.requested),
        )
        seconds = time.perf_counter() - started
        state["losses"][-1] = state["losses"][-1] + losses
        num_train, batch_size = len(self.captions), config["batch_size"]
        self.timing["train_seconds"] += seconds
        self.timing["images"] += min(state["step"] * batch_size, num_train) - min(start_step * batch_size, num_train)
        return state["step"] == self.steps_per_epoch, seconds

    def end_epoch(self, seconds: float) -> dict:
        """
        After a complete epoch: step the schedule; in rank 0 evaluate, save
        last.pt (and best.pt when validation CIDEr-D improved) and
        metrics.json.

        Returns:
        - the epoch's record (loss, seconds, images/s; metrics in rank 0)
        """
        state, processes = self.state, self.processes
        self.scheduler.step()
        state["epoch"], state["step"] = state["epoch"] + 1, 0
        epoch_losses = state["losses"][-1]
        record = {
            "epoch": state["epoch"],
            "loss": processes.mean(sum(epoch_losses), len(epoch_losses)),
            "train_seconds": seconds,
            "images_per_second": len(self.captions) / seconds if seconds > 0 else None,
        }
        if processes.is_main:
            started = time.perf_counter()
            record.update(evaluate(self.model, self.val, self.vocab, self.config, self.device, self.amp_dtype))
            record["eval_seconds"] = time.perf_counter() - started
            self.timing["eval_seconds"] += record["eval_seconds"]
            state["history"] = state["history"] + [record]
            improved = state["best"] is None or not record["cider"] <= state["best"]["cider"]
            if improved:
                state["best"] = record
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            write_json(self.out / "metrics.json", self.summary())
            tqdm.write(_epoch_line(record, improved))
        processes.barrier()
        return record

    def out_of_time(self, record: dict) -> bool:
        """Whether another epoch like the last one would end after --minutes (rank 0 decides for all)."""
        minutes = self.config["minutes"]
        last_epoch = record["train_seconds"] + record.get("eval_seconds", 0.0)
        late = bool(minutes) and time.perf_counter() - self.started + last_epoch > minutes * 60
        return self.processes.from_main(late)

    def interrupted(self) -> None:
        """Save the state of a stopped epoch and raise KeyboardInterrupt."""
        if self.processes.is_main:
            self.save("last.pt")
        self.say(
            f"interrupted: saved {self.out / 'last.pt'} (epoch {self.state['epoch'] + 1}, step {self.state['step']} "
            f"of {self.steps_per_epoch}); continue with: python -m helper.train --out {self.out} --resume",
            file=sys.stderr,
        )
        raise KeyboardInterrupt

    def run(self) -> dict:
        """
        Train to the last epoch (or the time budget), then write samples.png
        and the final metrics.json.

        Returns:
        - the contents of metrics.json in rank 0; {} in the others
        """
        config, state, num_train = self.config, self.state, len(self.captions)
        epochs, batch_size = config["epochs"], config["batch_size"]
        if state["epoch"] >= epochs:
            self.say(f"the run in {self.out} has done {state['epoch']} epochs; pass --epochs N to train longer")
            return self.finish()
        self.say(
            f"training {config['cell']} on {config['data']} ({num_train} training rows, "
            f"{len(unique_rows(self.val['image_ids'])[0])} validation images) on {self.device}"
            f"{f' x{self.processes.world_size} processes' if self.processes.distributed else ''}, "
            f"{self.amp_dtype or torch.float32}, epochs {state['epoch'] + 1}..{epochs}, {batch_size} images per step "
            f"-> {self.out}"
        )
        done = min(state["epoch"] * num_train + state["step"] * batch_size, epochs * num_train)
        bar = tqdm(
            total=epochs * num_train, initial=done, unit="img", unit_scale=True, dynamic_ncols=True,
            disable=not (config["progress"] and self.processes.is_main),
        )
        with GracefulStop() as stop, bar:
            while state["epoch"] < epochs:
                bar.set_description(f"epoch {state['epoch'] + 1}/{epochs}")
                complete, seconds = self.train_one_epoch(bar, stop)
                if not complete:
                    bar.close()
                    self.interrupted()
                record = self.end_epoch(seconds)
                if state["epoch"] < epochs and self.out_of_time(record):
                    self.say(f"stopping after epoch {state['epoch']}: the next would end after {config['minutes']} minutes")
                    break
        return self.finish()

    def finish(self) -> dict:
        """samples.png and the final metrics.json, in rank 0."""
        result = {}
        if self.processes.is_main:
            if (self.out / "best.pt").is_file():
                samples = self.config["samples"]
                write_samples(self.out / "best.pt", self.real_val, self.vocab, samples, self.out / "samples.png", self.device)
            result = self.summary()
            write_json(self.out / "metrics.json", result)
            self.say(
                f"best epoch {result['best_epoch']}: {_format_metrics(result['metrics'])}; "
                f"wrote {self.out}/(best.pt, last.pt, metrics.json, samples.png)"
            )
        self.processes.barrier()
        return result

    def summary(self) -> dict:
        """
        The contents of metrics.json: a dict of
        - metrics: the best epoch's validation metrics (bleu1..bleu4, cider,
          exact, and grounding for "attn" on "shapes"), best_epoch: its number
        - last: the last epoch's record; history: every epoch's record
          (loss, metrics, seconds, images/s)
        - timing: seconds spent training, evaluating and encoding features
          (over all sessions of a resumed run), training images/s, and this
          session's wall time
        - epochs_done, device, processes, config
        """
        state, timing = self.state, self.timing
        best = state["best"] or {}
        metric_names = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact", "grounding")
        return {
            "metrics": {k: best[k] for k in metric_names if k in best},
            "best_epoch": best.get("epoch"),
            "epochs_done": state["epoch"],
            "last": state["history"][-1] if state["history"] else None,
            "history": state["history"],
            "timing": {
                **timing,
                "images_per_second": timing["images"] / timing["train_seconds"] if timing["train_seconds"] else None,
                "session_seconds": time.perf_counter() - self.started,
            },
            "device": str(self.device),
            "processes": self.processes.world_size,
            "config": self.config,
        }


def _format_metrics(metrics: dict) -> str:
    names = [k for k in ("bleu1", "bleu4", "cider", "exact", "grounding") if k in metrics and metrics[k] is not None]
    return " ".join(f"{k} {metrics[k]:.3f}" for k in names)


def _epoch_line(record: dict, improved: bool) -> str:
    return (
        f"epoch {record['epoch']}: loss {record['loss']:.3f}, {record['images_per_second']:.0f} img/s, "
        f"val {_format_metrics(record)}{' (best)' if improved else ''}"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The command line: train, and report bad input as `error: ...`.

    Returns:
    - the exit code: 0, 1 for bad input, 2 for bad options (argparse),
      130 when interrupted (last.pt saved)
    """
    return run_command(build_parser(), train_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
