"""
--freeze-encoder: the decoder trains alone, on features of the frozen
encoder computed once (helper/captioning/features.py holds the pieces).

`FrozenEncoder.install` computes the features of all training and
validation images (or reads them from a cache file made from the same
encoder weights, images and precision), standardises them per channel and
puts a FeatureLookup over them in the encoder's place. The model then trains
on index images; its checkpoints still hold a model of raw images
(`weights`: the encoder's weights put back, the standardisation folded into
the feature projection) and the projection as trained (`projection_state`),
from which `restore` goes on when the run resumes.
"""
import hashlib
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from helper.captioning.config import RunConfig
from helper.captioning.features import (
    FeatureLookup,
    encode_images,
    fold_standardisation,
    standardise_features,
    swap_image_encoder,
    unfold_standardisation,
)
from helper.captioning.parts import model_parts, unwrap_model
from helper.captioning.processes import Processes
from helper.captioning.splits import unique_rows
from helper.common.files import atomic_output


def _fingerprint(encoder: nn.Module, image_sets: Sequence[torch.Tensor], amp_dtype) -> str:
    """A hash of what cached features depend on: encoder weights, images, precision."""
    digest = hashlib.sha1(str(amp_dtype).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for images in image_sets:
        digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cache(cache_path: Path, fingerprint: str) -> Optional[torch.Tensor]:
    """The features in cache_path when they were made with this fingerprint; else None (saying why on stderr)."""
    try:
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint:
            return cached["features"]
        print(f"{cache_path} holds features of another encoder or data; computing them anew", file=sys.stderr)
    except Exception as error:  # a damaged file is replaced, never used
        print(f"{cache_path} cannot be read ({error}); computing the features anew", file=sys.stderr)
    return None


def feature_table(
    encoder: nn.Module,
    splits: Sequence[Dict[str, torch.Tensor]],
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
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
      (see encode_images)
    - cache_path: file to read the table from, or to write it to
    - progress: show a progress bar

    Returns a tuple of:
    - table: float32 (M, D, Da, Da) on the CPU, M distinct images of all splits
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
        cached = _read_cache(cache_path, fingerprint)
        if cached is not None:
            return cached, rows
    table = torch.cat(
        [encode_images(encoder, images, batch_size, device, amp_dtype, channels_last, progress) for images in firsts]
    )
    if cache_path is not None:
        with atomic_output(cache_path) as tmp:
            torch.save({"fingerprint": fingerprint, "features": table}, tmp)
    return table, rows


class FrozenEncoder:
    """
    A model whose frozen encoder a FeatureLookup stands in for (see the
    module docstring). Attributes:
    - model: the model, with the FeatureLookup in its encoder's place
    - encoder_name, encoder: the encoder's dotted name and the encoder
    - projection_name, feature_stats: the feature projection's name and the
      per-channel (mean, std), each (D,), that its features were
      standardised with; both None when the projection has no bias (the
      features are then used raw: folding the mean needs the bias)
    - rows: for each split given to install, int64 (N_s,), the row of its
      features for each of its rows
    - num_images: the distinct images whose features the table holds
    - seconds: what computing (or reading) the features took
    """

    def __init__(self, model: nn.Module, encoder_name: str, encoder: nn.Module, rows: List[torch.Tensor]):
        self.model, self.encoder_name, self.encoder, self.rows = model, encoder_name, encoder, rows
        self.projection_name: Optional[str] = None
        self.feature_stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.num_images, self.seconds = 0, 0.0

    @classmethod
    def install(
        cls,
        model: nn.Module,
        splits: Sequence[Dict[str, torch.Tensor]],
        config: RunConfig,
        processes: Processes,
        amp_dtype: Optional[torch.dtype],
    ) -> "FrozenEncoder":
        """
        Compute the features of the splits' distinct images (the first
        split's alone give the standardisation's statistics) and put a
        FeatureLookup over them in the model's encoder's place.

        Inputs:
        - model: the CaptioningRNN, on processes.device, its encoder frozen
          (requires_grad False)
        - splits: the training split, then others: dicts with "images"
          (N_s, 3, H, W) and "image_ids" (N_s,)
        - config: fast, eval_batch_size, feature_cache and progress say how
        - processes: with a cache file, rank 0 writes it and the others read it
        - amp_dtype: the precision of the encoding (part of the cache's key)

        Returns:
        - the FrozenEncoder
        """
        start, device, parts = time.perf_counter(), processes.device, model_parts(model)
        cache = Path(config.feature_cache) if config.feature_cache else None
        if cache is not None and not processes.is_main:
            processes.barrier()  # until rank 0 has written the cache file
        table, rows = feature_table(
            parts.encoder, splits, device, amp_dtype, config.fast, config.eval_batch_size, cache,
            progress=config.progress and processes.is_main,
        )
        if cache is not None and processes.is_main:
            processes.barrier()
        projection_name, feature_stats = None, None
        if parts.feature_proj.bias is not None:
            table, mean, std = standardise_features(table, rows[0].unique())
            projection_name = next(n for n, m in unwrap_model(model).named_modules() if m is parts.feature_proj)
            feature_stats = (mean, std)
        if device.type == "cuda":
            table = table.to(device)  # look features up where the decoder runs
        frozen = cls(model, *swap_image_encoder(model, FeatureLookup(table)), rows)
        frozen.projection_name, frozen.feature_stats = projection_name, feature_stats
        frozen.num_images, frozen.seconds = len(table), time.perf_counter() - start
        return frozen

    def _projection(self) -> nn.Linear:
        return unwrap_model(self.model).get_submodule(self.projection_name)

    def weights(self) -> Dict[str, torch.Tensor]:
        """
        The model's state_dict on the CPU, as a model of raw images: the
        encoder's weights included, and the feature projection folded with
        the standardisation (see fold_standardisation).
        """
        weights = unwrap_model(self.model).state_dict()
        weights.update({f"{self.encoder_name}.{k}": v for k, v in self.encoder.state_dict().items()})
        weights = {k: v.detach().cpu() for k, v in weights.items()}
        if self.projection_name is not None:  # on the CPU, where the feature statistics are
            name = self.projection_name
            weight, bias = fold_standardisation(weights[f"{name}.weight"], weights[f"{name}.bias"], *self.feature_stats)
            weights.update({f"{name}.weight": weight, f"{name}.bias": bias})
        return weights

    def projection_state(self) -> Optional[Dict[str, torch.Tensor]]:
        """The feature projection as trained, on standardised features ({"weight", "bias"} on the CPU); None without."""
        if self.projection_name is None:
            return None
        projection = self._projection()
        return {"weight": projection.weight.detach().cpu(), "bias": projection.bias.detach().cpu()}

    def restore(self, checkpoint: dict) -> None:
        """
        On resume, after the checkpoint's model weights were loaded: put
        back the projection as trained, which the optimiser's state belongs
        to, so that the run goes on bit for bit.

        Inputs:
        - checkpoint: from load_checkpoint
        """
        if self.projection_name is None:
            return
        saved = checkpoint.get("standardised_projection")
        if saved is None:
            # Written before frozen runs standardised their features: the
            # projection just loaded is for raw features, so unfold it (same model).
            loaded = self.projection_state()
            weight, bias = unfold_standardisation(loaded["weight"], loaded["bias"], *self.feature_stats)
            saved = {"weight": weight, "bias": bias}
        projection = self._projection()
        with torch.no_grad():
            projection.weight.copy_(saved["weight"])
            projection.bias.copy_(saved["bias"])
