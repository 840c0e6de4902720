"""
The processes of a training run: one, or several under torchrun
(DistributedDataParallel), and how Ctrl-C and SIGTERM stop them cleanly.
"""
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from helper.common.utils import pick_device


@dataclass
class Processes:
    """
    This process's place in a (possibly distributed) run, and the
    collectives the run needs. Every collective is a no-op in a single
    process; in a distributed run all processes must call it.
    """

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
        """Whether flag is true in any process."""
        if not self.distributed:
            return flag
        tensor = self._flag(flag)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def from_main(self, flag: bool) -> bool:
        """Rank 0's flag, in every process."""
        if not self.distributed:
            return flag
        tensor = self._flag(flag)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def share(self, value):
        """Rank 0's value (plain data: what pickle takes), in every process."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def mean(self, total: float, count: int) -> float:
        """The mean over all processes of values whose local sum and count are given (nan for none)."""
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
    stop after the current step, so that the state it saves is consistent;
    a second Ctrl-C interrupts at once. A SIGINT that the process ignores
    (a shell's background job) stays ignored.
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
                # A shell starts background jobs with SIGINT ignored, so that a Ctrl-C meant for the
                # foreground leaves them running; keep it ignored, as the rest of the run does.
                if not (sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
