"""
What a training run has done so far (RunState): what its checkpoints hold
to resume it exactly, and what its metrics.json reports.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from helper.captioning.config import RunConfig
from helper.captioning.metrics import REPORTED_METRICS


def _no_time() -> Dict[str, float]:
    return {"train_seconds": 0.0, "eval_seconds": 0.0, "feature_seconds": 0.0, "images": 0}


@dataclass
class RunState:
    """
    - epoch: epochs complete; step: minibatches done of the next epoch
    - losses: this process's loss of every minibatch, one list per epoch
    - history: every complete epoch's record (loss, seconds, images/s,
      validation metrics); best: the record of the best validation CIDEr-D
    - timing: seconds spent training, evaluating and computing features, and
      images trained on, over all sessions of the run
    """

    epoch: int = 0
    step: int = 0
    losses: List[List[float]] = field(default_factory=list)
    history: List[dict] = field(default_factory=list)
    best: Optional[dict] = None
    timing: Dict[str, float] = field(default_factory=_no_time)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "RunState":
        """The state saved in a checkpoint (see as_dict)."""
        return cls(
            epoch=checkpoint["epoch"], step=checkpoint["step"], losses=checkpoint["losses"],
            history=checkpoint["history"], best=checkpoint["best"], timing={**_no_time(), **checkpoint["timing"]},
        )

    def as_dict(self) -> dict:
        """The entries of a checkpoint: epoch, step, losses, history, best, timing (plain data)."""
        return asdict(self)

    def add_steps(self, start_step: int, losses: List[float], seconds: float, images: int) -> None:
        """
        Record minibatches of the current epoch run from start_step on:
        their losses (in a new list when the epoch starts), the seconds
        they took and the images they trained on.
        """
        if start_step == 0:
            self.losses = self.losses + [[]]
        self.losses[-1] = self.losses[-1] + losses
        self.timing["train_seconds"] += seconds
        self.timing["images"] += images

    def complete_epoch(self, loss: float, seconds: float, num_train: int) -> dict:
        """
        Count the current epoch as complete.

        Inputs:
        - loss: its mean minibatch loss (over all processes)
        - seconds: the training seconds of its last stretch
        - num_train: the training rows of an epoch

        Returns:
        - its record: epoch, loss, train_seconds, images_per_second
        """
        self.epoch, self.step = self.epoch + 1, 0
        images_per_second = num_train / seconds if seconds > 0 else None
        return {"epoch": self.epoch, "loss": loss, "train_seconds": seconds, "images_per_second": images_per_second}

    def add_record(self, record: dict) -> bool:
        """
        Add a complete epoch's record (with its validation metrics) to the
        history.

        Returns:
        - whether it is the best so far (its CIDEr-D is higher, or not a number)
        """
        self.history = self.history + [record]
        improved = self.best is None or not record["cider"] <= self.best["cider"]
        if improved:
            self.best = record
        return improved

    def summary(self, config: RunConfig, device: str, processes: int, session_seconds: float) -> dict:
        """
        The contents of metrics.json.

        Inputs:
        - config: the run's configuration
        - device: where it trained; processes: how many trained it
        - session_seconds: the wall time of this session so far

        Returns a dict of:
        - metrics: the best epoch's validation metrics (REPORTED_METRICS it
          has: grounding for "attn" on "shapes"); best_epoch: its number
        - epochs_done; last: the last epoch's record; history: every epoch's
        - timing: as in RunState, with training images/s and session_seconds
        - device, processes, config (as a dict)
        """
        best, timing = self.best or {}, self.timing
        images_per_second = timing["images"] / timing["train_seconds"] if timing["train_seconds"] else None
        return {
            "metrics": {name: best[name] for name in REPORTED_METRICS if name in best},
            "best_epoch": best.get("epoch"),
            "epochs_done": self.epoch,
            "last": self.history[-1] if self.history else None,
            "history": self.history,
            "timing": {**timing, "images_per_second": images_per_second, "session_seconds": session_seconds},
            "device": device,
            "processes": processes,
            "config": config.as_dict(),
        }
