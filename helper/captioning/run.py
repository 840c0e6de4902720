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
epoch) alone, and training runs under helper.common.utils.reproducible
(deterministic kernels, the run's number of --threads, recorded in its
checkpoints), so two runs of one seed give the same weights and metrics on
a busy machine or an idle one, and a resumed run (`--resume`, also after
Ctrl-C or kill, from the last checkpoint, even mid-epoch) continues exactly
as if never stopped.
The first Ctrl-C (or SIGTERM) finishes the current step, saves last.pt and
exits; a second Ctrl-C stops at once (last.pt then holds the previous
epoch; checkpoints are written atomically, so it is always loadable).

`--freeze-encoder` computes the encoder's features of all images once (eval
mode, no gradients) and trains the decoder alone from them (see
helper/captioning/frozen_encoder.py); `--feature-cache FILE` also keeps them
on disk for the next run with the same encoder and images.

Distributed: under torchrun (RANK / WORLD_SIZE in the environment) every
process trains a DistributedDataParallel replica (gloo on CPU, nccl on
CUDA) on its shard of every global minibatch of --batch-size examples;
only rank 0 evaluates and writes files. The result matches one process with
the same global batch up to floating-point rounding, except for batch
normalisation in the encoder: each process normalises with the statistics
of its own shard. `--sync-bn` (CUDA only) synchronises them; or use
--freeze-encoder, which keeps the encoder in eval mode.

The pieces, by job, in helper/captioning/: config.py (RunConfig: the
options and their defaults), processes.py (torchrun, Ctrl-C), splits.py
(the data's splits), run_model.py (the model with its optimiser),
frozen_encoder.py and features.py (--freeze-encoder), run_state.py (the
run's progress, as checkpoints and metrics.json hold it), outputs.py (the
output folder and what rank 0 writes there); this module puts them
together and runs the epochs.
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from helper.captioning.checkpoint import set_rng_state
from helper.captioning.config import RunConfig, build_parser
from helper.captioning.features import index_images
from helper.captioning.frozen_encoder import FrozenEncoder
from helper.captioning.outputs import RunReport, check_output_dir, clear_output_dir, finished_outputs
from helper.captioning.processes import GracefulStop, Processes, start_processes, stop_processes
from helper.captioning.run_model import RunModel
from helper.captioning.run_state import RunState
from helper.captioning.shapes_encoder import PretrainConfig, pretrained_shapes_encoder
from helper.captioning.splits import split_arrays, unique_rows
from helper.captioning.training import epoch_order, train_epoch
from helper.common.cli import run_command
from helper.common.utils import reproducible
from helper.data.datasets import load_dataset


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
    checkpoint = check_output_dir(args.out, args.resume, args.force)
    processes = start_processes(args.device)
    try:
        if checkpoint is not None:
            config = RunConfig.resumed(checkpoint["config"], args)
        else:
            config = RunConfig.from_args(args, processes.device)
        config.check(processes.device)
        # A finished run has nothing to do: say so before loading the data and encoding features.
        finished = finished_outputs(args.out, checkpoint, config.epochs) if checkpoint and processes.is_main else None
        if processes.from_main(finished is not None):
            if processes.is_main:
                print(_finished_line(args.out, checkpoint["epoch"]))
            return finished or {}
        if processes.is_main:
            clear_output_dir(args.out, resuming=checkpoint is not None)
        if data is None:
            data = load_dataset(config.data)
        with reproducible(processes.device, config.threads):
            return start_run(config, args.out, processes, data, checkpoint, started).run()
    finally:
        stop_processes(processes)


@dataclass
class RunData:
    """
    The data of a run (splits as split_arrays gives them):
    - vocab: {"idx_to_token", "token_to_idx"}
    - train: the training split: images (N, 3, H, W), captions (N, T + 1), ...
    - val: the validation split that the model captions
    - real_val: the validation split with its real images, for samples.png
    With a frozen encoder, train and val hold index images (see use_features).
    """

    vocab: dict
    train: Dict[str, torch.Tensor]
    val: Dict[str, torch.Tensor]
    real_val: Dict[str, torch.Tensor]

    @classmethod
    def select(cls, data: dict, config: RunConfig) -> "RunData":
        """The rows of data (helper.data format) that config's train_images and val_images keep."""
        val = split_arrays(data, "val", config.val_images)
        return cls(data["vocab"], split_arrays(data, "train", config.train_images), dict(val), val)

    def use_features(self, frozen: FrozenEncoder) -> None:
        """Index images of the frozen encoder's features in the place of the real images."""
        self.train["images"] = index_images(frozen.rows[0])
        # Validation's index images keep the real size: the grounding score reads the boxes' scale from it.
        self.val["images"] = index_images(frozen.rows[1], size=self.real_val["images"].shape[-1])


def start_run(
    config: RunConfig, out: Path, processes: Processes, data: dict, checkpoint: Optional[dict], started: float
) -> "TrainingRun":
    """
    Put a run together in this process: its data, its model (with the
    frozen encoder's features when the decoder trains alone), and, when
    resuming, the checkpoint's state and random states.

    Inputs:
    - config: the run's configuration
    - out: the output folder
    - processes: this process's place in the run
    - data: the data set (helper.data format)
    - checkpoint: the checkpoint to resume from, or None
    - started: time.perf_counter() when the session started

    Returns:
    - the TrainingRun, ready to run()
    """
    if checkpoint is not None and checkpoint["vocab"]["idx_to_token"] != data["vocab"]["idx_to_token"]:
        raise ValueError(f"the data {config.data} has another vocabulary than the run in {out}")
    run_data = RunData.select(data, config)
    pretrained = config.encoder == "shapes" and checkpoint is None
    trunk = pretrained_for_run(data, config, processes)["trunk"] if pretrained else None
    model = RunModel.create(config, run_data.vocab, processes, checkpoint, [run_data.train, run_data.val], trunk)
    state = RunState.from_checkpoint(checkpoint) if checkpoint is not None else RunState()
    if checkpoint is not None:
        set_rng_state(checkpoint["rng"])
    frozen, device = model.frozen, processes.device
    if frozen is not None:
        if processes.is_main:
            print(f"encoded {frozen.num_images} images once in {frozen.seconds:.1f} s; training the decoder alone")
        state.timing["feature_seconds"] += frozen.seconds
        run_data.use_features(frozen)
    elif config.fast and device.type == "cuda":  # one copy of the data beats one per minibatch
        run_data.train.update({key: run_data.train[key].to(device) for key in ("images", "captions")})
    report = RunReport(out, config, run_data.vocab, model, state, processes, started)
    return TrainingRun(config, out, processes, run_data, model, state, report, started)


def pretrained_for_run(data: dict, config: RunConfig, processes: Processes) -> dict:
    """
    The encoder pretrained on the data's training images for this run's
    settings (see helper.captioning.shapes_encoder): rank 0 pretrains it or
    reads it from the cache, the other ranks read what it cached.

    Returns:
    - the record of pretrained_shapes_encoder: "trunk" (the weights),
      "report", "config", "path"
    """
    if not processes.is_main:
        processes.barrier()  # until rank 0 has cached it
    pretrained = pretrained_shapes_encoder(
        data, PretrainConfig(images=config.pretrain_images), device=processes.device,
        progress=config.progress and processes.is_main,
    )
    if processes.is_main:
        processes.barrier()
    return pretrained


@dataclass
class TrainingRun:
    """
    One run in one process (see start_run): its data, model, progress and
    outputs (written by rank 0), and when this session started
    (time.perf_counter()). `run()` trains to the end; the other methods
    are its steps.
    """

    config: RunConfig
    out: Path
    processes: Processes
    data: RunData
    model: RunModel
    state: RunState
    report: RunReport
    started: float

    def __post_init__(self):
        self.images, self.captions = self.data.train["images"], self.data.train["captions"]
        self.steps_per_epoch = math.ceil(len(self.captions) / self.config.batch_size)

    def say(self, *args, **kwargs) -> None:
        """print, in rank 0 only."""
        if self.processes.is_main:
            print(*args, **kwargs)

    def train_one_epoch(self, bar: tqdm, stop: GracefulStop) -> Tuple[bool, float]:
        """
        Train through the rest of the current epoch, or until a stop request.

        Returns a tuple of:
        - whether the epoch is complete
        - the seconds it took
        """
        config, state, processes, setup = self.config, self.state, self.processes, self.model.setup
        start_step, started = state.step, time.perf_counter()
        self.model.net.train()
        losses, state.step = train_epoch(
            self.model.net, setup.optimizer, self.images, self.captions, config.batch_size, processes.device,
            order=epoch_order(len(self.captions), True, config.seed, state.epoch),
            amp_dtype=setup.amp_dtype, scaler=setup.scaler, channels_last=setup.path.channels_last,
            rank=processes.rank, world_size=processes.world_size, start_step=start_step,
            bar=bar, should_stop=lambda: processes.any(stop.requested),
        )
        seconds = time.perf_counter() - started
        num_train, batch_size = len(self.captions), config.batch_size
        images = min(state.step * batch_size, num_train) - min(start_step * batch_size, num_train)
        state.add_steps(start_step, losses, seconds, images)
        return state.step == self.steps_per_epoch, seconds

    def end_epoch(self, seconds: float) -> dict:
        """
        After a complete epoch: step the schedule; in rank 0 evaluate and
        write the outputs (RunReport.epoch_done).

        Returns:
        - the epoch's record (loss, seconds, images/s; metrics in rank 0)
        """
        state, processes = self.state, self.processes
        self.model.setup.scheduler.step()
        loss = processes.mean(sum(state.losses[-1]), len(state.losses[-1]))
        record = state.complete_epoch(loss, seconds, len(self.captions))
        if processes.is_main:
            self.report.epoch_done(record, self.data.val)
        processes.barrier()
        return record

    def out_of_time(self, record: dict) -> bool:
        """Whether another epoch like the last one would end after --minutes (rank 0 decides for all)."""
        minutes = self.config.minutes
        last_epoch = record["train_seconds"] + record.get("eval_seconds", 0.0)
        late = bool(minutes) and time.perf_counter() - self.started + last_epoch > minutes * 60
        return self.processes.from_main(late)

    def run(self) -> dict:
        """
        Train to the last epoch (or the time budget), then write samples.png
        and the final metrics.json.

        Returns:
        - the contents of metrics.json in rank 0; {} in the others
        """
        config, state, num_train = self.config, self.state, len(self.captions)
        if state.epoch >= config.epochs:
            self.say(_finished_line(self.out, state.epoch))
            return self.finish()
        self.say(_plan(self))
        done = min(state.epoch * num_train + state.step * config.batch_size, config.epochs * num_train)
        bar = tqdm(
            total=config.epochs * num_train, initial=done, unit="img", unit_scale=True, dynamic_ncols=True,
            disable=not (config.progress and self.processes.is_main),
        )
        with GracefulStop() as stop, bar:
            while state.epoch < config.epochs:
                bar.set_description(f"epoch {state.epoch + 1}/{config.epochs}")
                complete, seconds = self.train_one_epoch(bar, stop)
                if not complete:
                    bar.close()
                    if self.processes.is_main:
                        self.report.interrupted(self.steps_per_epoch)
                    raise KeyboardInterrupt
                record = self.end_epoch(seconds)
                if state.epoch < config.epochs and self.out_of_time(record):
                    self.say(f"stopping after epoch {state.epoch}: the next would end after {config.minutes} minutes")
                    break
        return self.finish()

    def finish(self) -> dict:
        """samples.png and the final metrics.json in rank 0 (RunReport.finish); returns its result there, else {}."""
        result = self.report.finish(self.data.real_val) if self.processes.is_main else {}
        self.processes.barrier()
        return result


def _finished_line(out: Path, epochs_done: int) -> str:
    """The line that says a resumed run has no epochs left."""
    return f"the run in {out} has done {epochs_done} epochs; pass --epochs N to train longer"


ENCODER_WORDS = {
    "random": "encoder of random weights",
    "shapes": "encoder pretrained on shapes",
    "imagenet": "encoder pretrained on ImageNet",
}


def _plan(run: TrainingRun) -> str:
    """The line that says what a session of a run trains."""
    config, processes = run.config, run.processes
    return (
        f"training {config.cell} on {config.data} ({len(run.captions)} training rows, "
        f"{len(unique_rows(run.data.val['image_ids'])[0])} validation images), {ENCODER_WORDS[config.encoder]}, "
        f"on {processes.device}"
        f"{f' x{processes.world_size} processes' if processes.distributed else ''}, "
        f"{run.model.setup.path.describe()}, epochs {run.state.epoch + 1}..{config.epochs}, "
        f"{config.batch_size} images per step -> {run.out}"
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
