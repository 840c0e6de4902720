"""
What a training run reads and writes in its output folder (RUN_FILES):
checking the folder before a run (check_output_dir, clear_output_dir), and
what rank 0 writes as the run goes on (RunReport): checkpoints, metrics.json
with the validation scores (validation_metrics), a line per epoch, and
samples.png (write_samples).
"""
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.checkpoint import build_model, describe, load_checkpoint, rng_state, save_checkpoint
from helper.captioning.config import RunConfig
from helper.captioning.decoding import decode_captions, generate_captions
from helper.captioning.metrics import HEADLINE_METRICS, evaluate_captions, exact_match, format_metrics
from helper.captioning.parts import unwrap_model
from helper.captioning.plotting import plot_samples
from helper.captioning.processes import Processes
from helper.captioning.run_model import RunModel
from helper.captioning.run_state import RunState
from helper.captioning.steps import autocast
from helper.common.files import write_json
from helper.data.format import references_by_image

# Files a run writes into its output folder.
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "samples.png")


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
            what = describe(load_checkpoint(last))
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


def clear_output_dir(out: Path, resuming: bool) -> None:
    """
    Create the output folder; for a new run (--force, or a folder without a
    run) delete the files of any older run, so that none of them stays
    next to the new run's.
    """
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def finished_outputs(out: Path, checkpoint: dict, epochs: int) -> Optional[dict]:
    """
    The metrics.json of a resumed run that has nothing left to do: its
    checkpoint has done `epochs` epochs and its final outputs are written.

    Inputs:
    - out: the output folder
    - checkpoint: the contents of out/last.pt
    - epochs: the run's --epochs

    Returns:
    - the contents of out/metrics.json; None when the run trains on, or
      when it was stopped before writing its final outputs (then the run
      writes them again)
    """
    if checkpoint["epoch"] < epochs:
        return None
    metrics, samples = out / "metrics.json", out / "samples.png"
    if not metrics.is_file() or ((out / "best.pt").is_file() and not samples.is_file()):
        return None
    try:
        result = json.loads(metrics.read_text())
    except ValueError:  # written atomically, so only a foreign file fails here: write it anew
        return None
    return result if isinstance(result, dict) and result.get("epochs_done") == checkpoint["epoch"] else None


def validation_metrics(
    model: nn.Module,
    val: Dict[str, torch.Tensor],
    idx_to_token: list,
    batch_size: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
) -> dict:
    """
    Greedy captions of the validation images, scored, in the training's
    precision.

    Inputs:
    - model: the captioning model (or its DDP wrapper), on device
    - val: the validation split (see split_arrays): images (N, 3, H, W),
      captions (N, T + 1), image_ids (N,), and boxes and word_objects when
      the data has them
    - idx_to_token: the vocabulary, index -> word
    - batch_size: images captioned at once
    - device: where the model is
    - amp_dtype: the training's autocast dtype, or None

    Returns:
    - metrics: bleu1..bleu4, cider, exact (see exact_match), and grounding
      for "attn" on data with grounding data
    """
    with autocast(device, amp_dtype):
        result = evaluate_captions(
            unwrap_model(model), val["images"], val["captions"], val["image_ids"], idx_to_token,
            batch_size=batch_size, device=device, boxes=val.get("boxes"), word_objects=val.get("word_objects"),
        )
    return {**result["metrics"], "exact": exact_match(result)}


def write_samples(checkpoint_path: Path, val: Dict[str, torch.Tensor], count: int, path: Path, device) -> None:
    """
    samples.png: the first `count` distinct validation images, captioned
    greedily by the model of a checkpoint, with their references (and the
    attention maps for "attn").

    Inputs:
    - checkpoint_path: the checkpoint (best.pt)
    - val: the validation split with its real images (see split_arrays)
    - count: images to show
    - path: the PNG file to write
    - device: where to caption
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint).to(device)
    first_rows, references = references_by_image(val["image_ids"], val["captions"])
    images = val["images"][first_rows[:count]]
    captions, attn_weights = generate_captions(model, images.to(device))
    idx_to_token = checkpoint["vocab"]["idx_to_token"]
    plot_samples(
        images,
        decode_captions(captions.cpu(), idx_to_token),
        [decode_captions(refs, idx_to_token) for refs in references[:count]],
        attn_weights,
        path=path,
    )


class RunReport:
    """
    What rank 0 writes into the output folder as a run goes on (the other
    processes call none of this): last.pt and best.pt, metrics.json, a line
    per epoch, and samples.png at the end.
    """

    def __init__(
        self, out: Path, config: RunConfig, vocab: dict, model: RunModel, state: RunState, processes: Processes,
        started: float,
    ):
        """
        Inputs:
        - out: the output folder
        - config, vocab, model, state: the run's, saved in its checkpoints
        - processes: the run's processes (device and count, for metrics.json)
        - started: time.perf_counter() when the session started
        """
        self.out, self.config, self.vocab, self.model, self.state = out, config, vocab, model, state
        self.processes, self.started = processes, started

    def save(self, name: str) -> None:
        """Write the checkpoint out/name (see helper/captioning/checkpoint.py)."""
        contents = {
            "model_config": self.config.model_config(),
            "vocab": self.vocab,
            **self.model.checkpoint_state(),
            "config": self.config.as_dict(),
            "rng": rng_state(),
            **self.state.as_dict(),
        }
        save_checkpoint(self.out / name, contents)

    def epoch_done(self, record: dict, val: Dict[str, torch.Tensor]) -> None:
        """
        After a complete epoch: add the validation metrics to its record,
        save last.pt (and best.pt when validation CIDEr-D improved) and
        metrics.json, and print the epoch's line.

        Inputs:
        - record: the epoch's record (epoch, loss, train_seconds,
          images_per_second), completed here
        - val: the validation split the model captions (see validation_metrics)
        """
        setup, started = self.model.setup, time.perf_counter()
        idx_to_token, batch_size = self.vocab["idx_to_token"], self.config.eval_batch_size
        device = self.processes.device
        record.update(validation_metrics(setup.model, val, idx_to_token, batch_size, device, setup.amp_dtype))
        record["eval_seconds"] = time.perf_counter() - started
        self.state.timing["eval_seconds"] += record["eval_seconds"]
        improved = self.state.add_record(record)
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        write_json(self.out / "metrics.json", self.summary())
        tqdm.write(
            f"epoch {record['epoch']}: loss {record['loss']:.3f}, {record['images_per_second']:.0f} img/s, "
            f"val {format_metrics(record, HEADLINE_METRICS, one_line=True)}{' (best)' if improved else ''}"
        )

    def interrupted(self, steps_per_epoch: int) -> None:
        """Save last.pt in the middle of an epoch, and say how to go on (on stderr)."""
        self.save("last.pt")
        print(
            f"interrupted: saved {self.out / 'last.pt'} (epoch {self.state.epoch + 1}, step {self.state.step} "
            f"of {steps_per_epoch}); continue with: python -m helper.train --out {self.out} --resume",
            file=sys.stderr,
        )

    def finish(self, real_val: Dict[str, torch.Tensor]) -> dict:
        """
        samples.png from best.pt (when there is one) and the final metrics.json.

        Inputs:
        - real_val: the validation split with its real images

        Returns:
        - the contents of metrics.json
        """
        best, samples = self.out / "best.pt", self.out / "samples.png"
        if best.is_file():
            write_samples(best, real_val, self.config.samples, samples, self.processes.device)
        result = self.summary()
        write_json(self.out / "metrics.json", result)
        print(
            f"best epoch {result['best_epoch']}: {format_metrics(result['metrics'], HEADLINE_METRICS, one_line=True)}; "
            f"wrote {self.out}/(best.pt, last.pt, metrics.json, samples.png)"
        )
        return result

    def summary(self) -> dict:
        """The contents of metrics.json (see RunState.summary)."""
        session_seconds = time.perf_counter() - self.started
        return self.state.summary(self.config, str(self.processes.device), self.processes.world_size, session_seconds)
