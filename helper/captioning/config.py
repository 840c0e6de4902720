"""
The configuration of a training run (`RunConfig`): its options with their
types and defaults (the one place to tune them), the command line of
`python -m helper.train` that sets them, and how a resumed run takes up
the configuration saved in its checkpoint.
"""
import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Tuple

import torch

from helper.captioning.checkpoint import ENCODER_CHANNELS
from helper.captioning.shapes_encoder import PretrainConfig
from helper.data.datasets import DATASET_NAMES
from helper.data.format import NULL

CELLS = ("rnn", "lstm", "attn")
# Where the encoder's weights come from: random, pretrained on the shapes data
# (helper/captioning/shapes_encoder.py, made offline and cached) or ImageNet.
ENCODERS = ("random", "shapes", "imagenet")

# The defaults that depend on the hardware. On a CPU the decoder trains
# alone, on standardised features of the frozen encoder computed once (on
# "shapes", the encoder pretrained on its training images): several times
# more images per second than training the encoder too, and better captions
# for the same time. A fixed number of epochs, so that a run gives the same
# numbers on every machine: on "shapes" two are enough for each decoder to
# caption most validation images right, and a 2-core CPU without AVX-512
# trains the three of them (make demo) within 10 minutes, the pretraining
# included. The learning rate stays below the one at which training on
# standardised features diverged. `--minutes` sets a time budget for those
# who want one. The measurements behind these numbers are in the README (the
# demo, and Performance). On CUDA the encoder trains too, on larger
# minibatches.
DEVICE_DEFAULTS = {
    "cpu": {"epochs": 2, "batch_size": 50, "learning_rate": 1e-3, "lr_decay": 0.9, "minutes": None,
            "freeze_encoder": True},
    "cuda": {"epochs": 30, "batch_size": 256, "learning_rate": 2e-3, "lr_decay": 0.95, "minutes": None,
             "freeze_encoder": False},
}
_CPU = DEVICE_DEFAULTS["cpu"]


def _defines_run(default=MISSING):
    """A field that defines the run: --resume refuses to change it (see RunConfig.resumed)."""
    return field(default=default, metadata={"defines_run": True})


@dataclass(frozen=True)
class RunConfig:
    """
    The configuration of a training run; checkpoints and metrics.json hold
    it as a plain dict (as_dict). The device-dependent fields default to
    DEVICE_DEFAULTS["cpu"]; from_args applies the defaults of the device.

    What defines the run (--resume refuses to change it):
    - cell: "rnn", "lstm" or "attn"; data: a name of DATASET_NAMES, or a
      data file's absolute path
    - wordvec_dim, hidden_dim: the decoder's sizes W and H
    - batch_size: the global minibatch; learning_rate: AdamW's initial one;
      lr_decay: its factor per epoch
    - seed: of the initial weights and of every epoch's order
    - freeze_encoder: train the decoder alone, on cached encoder features
    - encoder: the encoder's weights, one of ENCODERS; a new run on the
      "shapes" data defaults to "shapes", any other to "random"
    - pretrain_images: with encoder "shapes", the training images it is
      pretrained on (see helper.captioning.shapes_encoder.PretrainConfig)
    - fast: the fast path: mixed precision, channels_last and fused AdamW
      where they measurably help (helper.captioning.fast_path)
    - sync_bn: synchronise batch-norm statistics across GPUs
    - train_images: train on the first N distinct images (None: all)
    What a session may change, e.g. to train longer:
    - epochs: passes over the data; minutes: time budget (None or 0: none)
    - val_images: validate on the first N distinct images (None: all)
    - eval_batch_size: images captioned at once; samples: images in samples.png
    - feature_cache: file of the frozen encoder's features (None: none)
    - progress: show a progress bar
    - threads: CPU threads (torch.set_num_threads); a new run records the
      process's number, a resumed run keeps the recorded one unless given,
      so that it goes on exactly as it would have (see
      helper.common.utils.reproducible; None: the process's number)
    """

    cell: str = _defines_run()
    data: str = _defines_run("shapes")
    wordvec_dim: int = _defines_run(128)
    hidden_dim: int = _defines_run(256)
    batch_size: int = _defines_run(_CPU["batch_size"])
    learning_rate: float = _defines_run(_CPU["learning_rate"])
    lr_decay: float = _defines_run(_CPU["lr_decay"])
    seed: int = _defines_run(0)
    freeze_encoder: bool = _defines_run(_CPU["freeze_encoder"])
    encoder: str = _defines_run("random")
    pretrain_images: int = _defines_run(PretrainConfig.images)
    fast: bool = _defines_run(True)
    sync_bn: bool = _defines_run(False)
    train_images: Optional[int] = _defines_run(None)
    epochs: int = _CPU["epochs"]
    minutes: Optional[float] = _CPU["minutes"]
    val_images: Optional[int] = None
    eval_batch_size: int = 250
    samples: int = 6
    feature_cache: Optional[str] = None
    progress: bool = True
    threads: Optional[int] = None

    @classmethod
    def defining(cls) -> Tuple[str, ...]:
        """The names of the fields that define a run."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("defines_run"))

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: torch.device) -> "RunConfig":
        """
        A new run's configuration: the options given over the defaults of
        the device (DEVICE_DEFAULTS, "cpu" for devices it does not name).

        Inputs:
        - args: parsed options of build_parser (None where not given)
        - device: where training runs

        Raises ValueError when no --cell is given.
        """
        given = _given(args)
        if "cell" not in given:
            raise ValueError(f"--cell is required for a new run: one of {', '.join(CELLS)}")
        encoder = "shapes" if given.get("data", default("data")) == "shapes" else "random"
        defaults = {**DEVICE_DEFAULTS.get(device.type, _CPU), "threads": torch.get_num_threads(), "encoder": encoder}
        return cls(**{**defaults, **given})

    @classmethod
    def resumed(cls, saved: dict, args: argparse.Namespace) -> "RunConfig":
        """
        A resumed run's configuration: the options given over the saved
        configuration (fields newer than the run take their defaults).

        Inputs:
        - saved: the checkpoint's "config"
        - args: parsed options of build_parser (None where not given)

        Raises ValueError when the options given would change what defines
        the run.
        """
        given, defining = _given(args), cls.defining()
        if "encoder" not in saved:  # a run from before there were encoders to choose: ImageNet's or random
            saved = {**saved, "encoder": "imagenet" if saved.get("pretrained") else "random"}
        changed = {
            name: (saved.get(name), value)
            for name, value in given.items()
            if name in defining and saved.get(name) != value
        }
        if changed:
            listed = ", ".join(f"{name}: run has {old!r}, given {new!r}" for name, (old, new) in changed.items())
            raise ValueError(f"--resume cannot change what defines the run in {args.out} ({listed}); use another --out")
        known = {f.name for f in fields(cls)}
        return cls(**{**{name: value for name, value in saved.items() if name in known}, **given})

    def check(self, device: torch.device) -> None:
        """Raise ValueError for options that do not go together, or not with the device."""
        if self.sync_bn and device.type != "cuda":
            raise ValueError("--sync-bn synchronises batch norm across GPUs; it needs CUDA")
        if self.feature_cache is not None and not self.freeze_encoder:
            raise ValueError("--feature-cache goes with --freeze-encoder")

    def as_dict(self) -> dict:
        """The fields as a plain dict, as checkpoints (loaded with weights_only) and metrics.json hold them."""
        return asdict(self)

    def model_config(self) -> dict:
        """The arguments of CaptioningRNN besides the vocabulary (a checkpoint's "model_config")."""
        return {
            "input_dim": ENCODER_CHANNELS,
            "wordvec_dim": self.wordvec_dim,
            "hidden_dim": self.hidden_dim,
            "cell_type": self.cell,
            "ignore_index": NULL,
        }


def _given(args: argparse.Namespace) -> dict:
    """The RunConfig fields among the options given (not None), data and feature_cache as comparable strings."""
    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    if "data" in given:
        # A file as its absolute path, so that a run compares alike from any folder.
        given["data"] = given["data"] if given["data"] in DATASET_NAMES else str(Path(given["data"]).resolve())
    if "feature_cache" in given:
        given["feature_cache"] = str(given["feature_cache"])
    return given


# ---------------------------------------------------------------------------
# The command line


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


def by_device(name: str) -> str:
    """The defaults of a device-dependent option, for --help: e.g. "cpu: 12, cuda: 30"."""
    return ", ".join(f"{device}: {defaults[name]}" for device, defaults in DEVICE_DEFAULTS.items())


def default(name: str):
    """The default of a RunConfig field that does not depend on the device, for --help."""
    return next(f.default for f in fields(RunConfig) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.train` (unset options are None, so that RunConfig tells them apart)."""
    p = argparse.ArgumentParser(
        prog="python -m helper.train",
        description="Train an RNN, LSTM or attention-LSTM captioning model; see helper/captioning/run.py.",
    )
    count = _positive(int)
    run = p.add_argument_group("the run")
    run.add_argument("--cell", choices=CELLS, help="decoder cell type (required for a new run)")
    data_help = f"{' or '.join(DATASET_NAMES)}, or a .pt/.h5 file ({default('data')})"
    run.add_argument("--data", metavar="NAME|FILE", help=data_help)
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
    _model_options(p.add_argument_group("model and optimisation"))
    _other_options(p)
    return p


def _model_options(model: argparse._ArgumentGroup) -> None:
    """The options of the model and its optimisation, into their group of build_parser."""
    count, number = _positive(int), _positive(float)
    model.add_argument("--hidden-dim", type=count, metavar="H", help=f"decoder hidden size ({default('hidden_dim')})")
    model.add_argument("--wordvec-dim", type=count, metavar="W", help=f"word vector size ({default('wordvec_dim')})")
    model.add_argument("--batch-size", type=count, metavar="B", help=f"global minibatch ({by_device('batch_size')})")
    model.add_argument(
        "--lr", dest="learning_rate", type=number, metavar="LR", help=f"AdamW ({by_device('learning_rate')})"
    )
    model.add_argument(
        "--lr-decay", type=number, metavar="F", help=f"learning-rate factor per epoch ({by_device('lr_decay')})"
    )
    model.add_argument("--seed", type=int, metavar="S", help=f"random seed ({default('seed')})")
    model.add_argument(
        "--encoder", choices=ENCODERS,
        help="the encoder's weights: random, pretrained on shapes (made once, cached next to the data) or "
        "ImageNet's (offline: cached file needed) (shapes for --data shapes, else random)",
    )
    model.add_argument(
        "--pretrained", dest="encoder", action="store_const", const="imagenet", help="the same as --encoder imagenet"
    )
    model.add_argument(
        "--pretrain-images", type=count, metavar="N",
        help=f"--encoder shapes: pretrain it on the first N training images ({default('pretrain_images')})",
    )
    model.add_argument(
        "--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
        help=f"train the decoder alone, on cached encoder features ({by_device('freeze_encoder')})",
    )
    model.add_argument("--feature-cache", type=Path, metavar="FILE", help="--freeze-encoder: keep the features here")


def _other_options(p: argparse.ArgumentParser) -> None:
    """The groups of hardware and output options, into build_parser's parser p."""
    count = _positive(int)
    hardware = p.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    hardware.add_argument("--no-fast", dest="fast", action="store_false", default=None, help="plain float32 loop")
    hardware.add_argument(
        "--threads", type=count, metavar="N",
        help="CPU threads (this process's number: torch.get_num_threads); a resumed run keeps its own",
    )
    hardware.add_argument(
        "--sync-bn", action="store_true", default=None, help="distributed on CUDA: synchronise batch-norm statistics"
    )

    report = p.add_argument_group("evaluation and output")
    report.add_argument("--val-images", type=count, metavar="N", help="validate on the first N distinct images (all)")
    report.add_argument(
        "--eval-batch-size", type=count, metavar="B", help=f"images captioned at once ({default('eval_batch_size')})"
    )
    report.add_argument("--samples", type=count, metavar="N", help=f"images in samples.png ({default('samples')})")
    report.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")

