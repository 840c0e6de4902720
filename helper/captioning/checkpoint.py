"""
Checkpoints of the command-line trainer (helper/train.py), and the one
factory of the models they hold (new_model, build_model).

A checkpoint is one file written with torch.save, holding everything needed
to use the model, or to continue its training exactly where it stopped:

    {
      "format": "rnn_lstm_captioning-checkpoint", "format_version": 1,
      "model_config": arguments of CaptioningRNN besides the vocabulary,
      "vocab": {"idx_to_token", "token_to_idx"},
      "model": model state_dict (encoder included, also when it was frozen),
      "config": the run's configuration (RunConfig of
                helper/captioning/config.py, as a dict),
      "epoch": epochs completed, "step": minibatches done of the next epoch,
      "optimizer", "scheduler", "scaler": their state_dicts (scaler or None),
      "rng": random number generator states (see rng_state),
      "losses": every minibatch's loss, one list per epoch,
      "history": per-epoch records; "best": the best epoch's record,
      "timing": seconds spent training, evaluating and encoding features,
      "standardised_projection": with --freeze-encoder, the feature
                projection as trained, on standardised features (see
                helper/captioning/frozen_encoder.py); else None.
    }

Files are written under a temporary name and renamed when complete, so a
run killed while saving leaves the previous checkpoint intact. They are read
with torch.load(weights_only=True): a file can hold tensors and plain
containers, never code, so loading a foreign file is safe.
"""
import contextlib
import random
import sys
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from torch import nn

from helper.common.files import PathLike, atomic_output

FORMAT = "rnn_lstm_captioning-checkpoint"
FORMAT_VERSION = 1
ENCODER_CHANNELS = 400  # the models' input_dim: channels of c5 of RegNetX-400MF, the ImageEncoder of the API


def rng_state() -> dict:
    """
    Returns:
    - the states of Python's, NumPy's and PyTorch's (CPU and CUDA) random
      number generators, as tensors and plain data (loadable with
      weights_only)
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """
    Restore the generators to a state from rng_state.

    Inputs:
    - state: the dict of rng_state
    """
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _as_tuples(value):
    """Lists back to tuples, recursively (random.setstate wants tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(path: PathLike, state: dict) -> Path:
    """
    Write a checkpoint atomically: to a temporary file in the same folder,
    renamed over path when complete.

    Inputs:
    - path: the file to write
    - state: the contents (see the module docstring); the format marker is
      added here

    Returns:
    - the path written
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """
    Read a checkpoint written by save_checkpoint.

    Inputs:
    - path: the checkpoint file
    - map_location: where to put its tensors

    Returns:
    - the checkpoint dict

    Raises FileNotFoundError for a missing file, IsADirectoryError for a
    folder, ValueError for a file that is not one of these checkpoints
    (unreadable, truncated, another program's, or a newer format).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [p.name for p in (path / "best.pt", path / "last.pt") if p.is_file()]
        hint = f"; it holds {' and '.join(candidates)}" if candidates else ""
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise ValueError(
            f"{path} is not a checkpoint of helper.train: torch.load cannot read it ({reason})"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        if isinstance(checkpoint, dict):
            what = f"a dict with keys {sorted(map(str, checkpoint))[:8]}"
        else:
            what = type(checkpoint).__name__
        raise ValueError(f"{path} is not a checkpoint of helper.train: expected format {FORMAT!r}; it holds {what}")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version!r}; this code reads versions up to {FORMAT_VERSION}"
        )
    return checkpoint


def new_model(model_config: dict, token_to_idx: dict, pretrained: bool = False, module=None) -> nn.Module:
    """
    A fresh CaptioningRNN: the one place that builds the models of runs and
    checkpoints.

    Inputs:
    - model_config: the arguments of CaptioningRNN besides the vocabulary
      (input_dim, wordvec_dim, hidden_dim, cell_type, ignore_index)
    - token_to_idx: the vocabulary, word -> index
    - pretrained: the encoder from ImageNet weights
    - module: the captioning module to build it with; None for
      `rnn_lstm_captioning` as imported now (the test suite puts the
      implementation under test there)

    Returns:
    - the model, in training mode on the CPU

    Raises ValueError when pretrained weights were asked for and cannot be
    had (offline, no cached file).
    """
    if module is None:
        import rnn_lstm_captioning as module
    try:
        # The commands' stdout is their output: what a module prints while
        # it builds (the standard encoder can print its c5 shape) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return module.CaptioningRNN(token_to_idx, image_encoder_pretrained=pretrained, **model_config)
    except RuntimeError as error:
        if pretrained:  # the module says which file to put where
            raise ValueError(f"--pretrained: {error}") from error
        raise


def build_model(checkpoint: dict, module=None) -> nn.Module:
    """
    The CaptioningRNN of a checkpoint, with its weights, in eval mode on
    the CPU.

    Inputs:
    - checkpoint: from load_checkpoint
    - module: as for new_model

    Returns:
    - the model
    """
    # The weights come from the checkpoint: no need for ImageNet's.
    model = new_model(checkpoint["model_config"], checkpoint["vocab"]["token_to_idx"], module=module)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def loss_history(checkpoint: dict) -> List[float]:
    """
    Inputs:
    - checkpoint: of helper.train

    Returns:
    - the loss of every minibatch so far, in order (as train_captioner's
      loss_history; the checkpoint keeps them per epoch)
    """
    return [loss for epoch in checkpoint.get("losses", []) for loss in epoch]


def describe(checkpoint: dict, path: Optional[PathLike] = None) -> str:
    """
    One line saying what a checkpoint holds, for messages, e.g.
    "runs/attn/best.pt: attn model, H=256, W=128, data shapes, 3 of 12 epochs".

    Inputs:
    - checkpoint: from load_checkpoint (what it lacks shows as "?" or is left out)
    - path: its file, named first when given
    """
    model, config = checkpoint.get("model_config", {}), checkpoint.get("config", {})
    where = f"{path}: " if path is not None else ""
    data = f", data {config['data']}" if "data" in config else ""
    of_total = f" of {config['epochs']}" if "epochs" in config else ""
    return (
        f"{where}{model.get('cell_type', '?')} model, H={model.get('hidden_dim', '?')}, "
        f"W={model.get('wordvec_dim', '?')}{data}, {checkpoint.get('epoch', '?')}{of_total} epochs"
    )
