"""
The model of a training run in one process (RunModel): built for the run's
configuration, set up to train (helper.captioning.training.setup_training),
with its frozen encoder's features when the decoder trains alone, and what
its checkpoints hold of it.
"""
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from helper.captioning.checkpoint import new_model
from helper.captioning.config import RunConfig
from helper.captioning.fast_path import PLAIN, FastPath, autocast_dtype, choose_path, rule_path
from helper.captioning.features import index_images
from helper.captioning.frozen_encoder import FrozenEncoder
from helper.captioning.parts import model_parts, unwrap_model
from helper.captioning.processes import Processes
from helper.captioning.shapes_encoder import load_trunk
from helper.captioning.training import TrainingSetup, setup_training
from helper.common.utils import reset_seed


@dataclass
class RunModel:
    """
    - setup: the model (SyncBatchNorm with --sync-bn) on its device, its
      optimiser, schedule and precision
    - frozen: with --freeze-encoder, the FrozenEncoder whose features the
      model trains on; else None
    - net: what the training steps call: the model, or its
      DistributedDataParallel wrapper in a distributed run
    """

    setup: TrainingSetup
    frozen: Optional[FrozenEncoder]
    net: nn.Module

    @classmethod
    def create(
        cls,
        config: RunConfig,
        vocab: dict,
        processes: Processes,
        checkpoint: Optional[dict],
        splits: Sequence[Dict[str, torch.Tensor]],
        trunk: Optional[Dict[str, torch.Tensor]] = None,
    ) -> "RunModel":
        """
        Inputs:
        - config: the run's configuration
        - vocab: the data's vocabulary ("token_to_idx", "idx_to_token")
        - processes: this process's place in the run (device, DDP)
        - checkpoint: the checkpoint to resume from (its weights and
          optimiser state), or None for a new model drawn from config.seed
        - splits: the training and validation splits, whose images the
          frozen encoder encodes (see FrozenEncoder.install)
        - trunk: weights for a new model's encoder (from
          helper.captioning.shapes_encoder), or None

        Returns:
        - the RunModel (random states are left to the caller to restore)
        """
        reset_seed(config.seed)
        imagenet = config.encoder == "imagenet" and checkpoint is None  # a checkpoint has the weights
        model = new_model(config.model_config(), vocab["token_to_idx"], pretrained=imagenet)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        elif trunk is not None:
            load_trunk(model_parts(model).encoder, trunk)
        if config.sync_bn and processes.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        frozen = None
        if config.freeze_encoder:
            model_parts(model).encoder.requires_grad_(False)  # before the optimiser, which leaves it out
            # The features are computed in the precision the device has kernels for (part of their cache's key).
            encoding = autocast_dtype(processes.device) if config.fast else None
            frozen = FrozenEncoder.install(model.to(processes.device), splits, config, processes, encoding)
        path = run_path(config, processes, checkpoint, model, splits[0], frozen)
        setup = setup_training(model, processes.device, config.learning_rate, config.lr_decay, path)
        run_model = cls(setup, frozen, net=model)
        if checkpoint is not None:
            run_model.restore(checkpoint)
        if processes.distributed:  # DDP starts from rank 0's weights: wrap the model complete
            device_ids = [processes.device] if processes.device.type == "cuda" else None
            run_model.net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return run_model

    def restore(self, checkpoint: dict) -> None:
        """Take up a checkpoint's optimiser, schedule and gradient-scaler states (and the projection as trained)."""
        if self.frozen is not None:
            self.frozen.restore(checkpoint)
        setup = self.setup
        setup.optimizer.load_state_dict(checkpoint["optimizer"])
        setup.scheduler.load_state_dict(checkpoint["scheduler"])
        if setup.scaler is not None and checkpoint.get("scaler") is not None:
            setup.scaler.load_state_dict(checkpoint["scaler"])

    def checkpoint_state(self) -> dict:
        """
        What a checkpoint holds of the model (plain data and CPU tensors):
        - model: the state_dict of a model of raw images (see FrozenEncoder.weights)
        - standardised_projection: see FrozenEncoder.projection_state; None
          without a frozen encoder
        - optimizer, scheduler, scaler: their state_dicts (scaler or None)
        """
        setup, frozen = self.setup, self.frozen
        if frozen is not None:
            weights = frozen.weights()
        else:
            weights = {k: v.detach().cpu() for k, v in unwrap_model(setup.model).state_dict().items()}
        return {
            "model": weights,
            "standardised_projection": frozen.projection_state() if frozen is not None else None,
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.scheduler.state_dict(),
            "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
            "fast_path": asdict(setup.path),
        }


def run_path(
    config: RunConfig, processes: Processes, checkpoint: Optional[dict], model: nn.Module,
    train: Dict[str, torch.Tensor], frozen: Optional[FrozenEncoder],
) -> FastPath:
    """
    The fast path of a run (see helper.captioning.fast_path): PLAIN without
    config.fast; a resumed run's recorded one; else this machine's for the
    model as it will train, chosen by rank 0 (measured on a minibatch of the
    training split the first time) and shared with the other ranks.
    """
    if not config.fast:
        return PLAIN
    if checkpoint is not None:  # a checkpoint from before paths were measured took every speed-up there was
        recorded = checkpoint.get("fast_path")
        return FastPath(**recorded) if recorded is not None else rule_path(processes.device)
    chosen = None
    if processes.is_main:
        size = max(2, config.batch_size // processes.world_size)
        images = index_images(frozen.rows[0][:size]) if frozen is not None else train["images"][:size]
        chosen = asdict(choose_path(model, processes.device, images, train["captions"][:size]))
    return FastPath(**processes.share(chosen))
