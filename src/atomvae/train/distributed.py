"""Several processes (``torchrun``): process group, ranks, sharding of batches, reductions.

atomvae runs data-parallel with PyTorch's own engine: ``torchrun --nproc-per-node N -m atomvae train ...``
starts N processes, each with the environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`process_group` joins them (gloo on the CPU, NCCL on GPUs, one
GPU per process: ``cuda:LOCAL_RANK``). A plain ``atomvae train`` is a group of one and runs exactly the
single-process code (no wrapper, no collectives).

How work is divided (the same rule for training, validation, ``encode`` and ``search-poses``): the global
order of particles and the global batches are those of a single process; of each global batch of B
images, rank r of W takes the images at positions r, r + W, r + 2W, ... (:func:`shard`). Each rank reads
only its own images from the memory-mapped stack. Because positions are interleaved, "the first n
images of the batch" (the heavy-atom clash term's subset) are exactly the first n / W images of every
rank, and the sampling noise of a batch is drawn for the whole global batch on every rank and sliced
(:class:`atomvae.model.batch_noise.BatchNoiseRows`), so W processes compute the same numbers as one.

Only rank 0 writes (checkpoints, metrics, progress bar, run folder files, outputs); it reads the run
folder and broadcasts what the other ranks need (:func:`from_main`), so on several machines only rank 0's
machine needs the run folder (every machine needs the particles and the base structure).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from atomvae.errors import InputError

T = TypeVar("T")

# torchrun's environment: a process started by it has all of these.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def active() -> bool:
    """True in a process group of more than one process (collectives needed)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the only process that writes files, logs and shows progress (also before the group is
    joined or after it is left: torchrun's RANK then)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0 if launched_by_torchrun() else True


def local_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA under torchrun (one GPU per process)."""
    if device.type != "cuda" or not launched_by_torchrun() or device.index is not None:
        return device
    local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(local)
    return local


@contextmanager
def process_group(device: torch.device, timeout_minutes: float = 30.0) -> Iterator[torch.device]:
    """Join torchrun's process group for the duration (NCCL for CUDA, gloo for the CPU); yields this
    process's device. Without torchrun's environment, or with a group already set up by the caller, it
    only yields the device. The group is left (after a barrier) when the block ends normally."""
    device = local_device(device)
    created = False
    if launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise InputError("torchrun", "this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Binding the process to its GPU (torch >= 2.3) lets NCCL set up its communicator at once.
        bind = device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters
        binding: dict[str, Any] = {"device_id": device} if bind else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes), **binding)
        created = True
    try:
        yield device
        if created:
            barrier()
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


# ---------------------------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class Shard:
    """This rank's part of one global batch of ``global_size`` images.

    indices: the particle indices this rank loads; rows (b,) long: their positions in the global batch;
    weight: the factor on this rank's batch-mean loss so that DDP's gradient average equals the gradient of
    the global batch mean (b * W / B; 1 for equal shards). A rank whose share is empty (a last batch
    smaller than W) still takes part in the collectives with the batch's first image at weight 0.
    """

    indices: list[int]
    rows: torch.Tensor
    weight: float
    global_size: int
    rank: int = 0
    world_size: int = 1

    @property
    def n_images(self) -> int:
        """Images this rank contributes (0 for the stand-in of an empty share)."""
        return len(self.indices) if self.weight > 0 else 0


def shard(
    batch: Sequence[int] | np.ndarray, rank_: int | None = None, world_size_: int | None = None
) -> Shard:
    """Rank ``rank_``'s share of a global batch (positions rank, rank + W, ...); defaults: this process."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    batch = [int(i) for i in batch]
    rows = list(range(r, len(batch), w))
    if not rows:
        return Shard(
            indices=batch[:1],
            rows=torch.zeros(1, dtype=torch.long),
            weight=0.0,
            global_size=len(batch),
            rank=r,
            world_size=w,
        )
    return Shard(
        indices=[batch[i] for i in rows],
        rows=torch.as_tensor(rows, dtype=torch.long),
        weight=len(rows) * w / len(batch),
        global_size=len(batch),
        rank=r,
        world_size=w,
    )


def shard_positions(n: int) -> np.ndarray:
    """Positions 0..n-1 this rank handles when n items are split over ranks (rank, rank + W, ...)."""
    return np.arange(rank(), n, world_size())


def subset_share(n_subset: int | None, shard_: Shard) -> tuple[int | None, float]:
    """A term evaluated on "the first ``n_subset`` images of the batch" (None: all), per rank.

    Returns (k, fraction): this rank evaluates its first k = ceil(n_subset / W) images (with interleaved
    shards the ranks' first k images together are the global batch's first n_subset when W divides it;
    otherwise a few more), which are ``fraction`` of all the images the ranks evaluate together. A rank
    weights its mean of the term by ``fraction`` so the ranks' sum is the mean over the whole subset.
    """
    w, b = shard_.world_size, shard_.global_size
    k = None if n_subset is None else -(-n_subset // w)
    counts = [len(range(r, b, w)) if k is None else min(len(range(r, b, w)), k) for r in range(w)]
    return k, (counts[shard_.rank] / sum(counts) if shard_.n_images else 0.0)


# ---------------------------------------------------------------------------------------------- communication
def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result (any picklable value) on every rank.

    An InputError raised on rank 0 is raised on every rank (so a bad input ends all processes with the
    same one-line message instead of leaving the others waiting in a collective); other exceptions on
    rank 0 reach the other ranks as a RuntimeError naming them.
    """
    if not active():
        return compute()
    message: list[Any] = [None]
    if is_main():
        try:
            message[0] = ("ok", compute())
        except InputError as err:
            message[0] = ("input_error", (err.path, err.problem))
            dist.broadcast_object_list(message, src=0)
            raise
        except BaseException as err:
            message[0] = ("error", f"{type(err).__name__}: {err}")
            dist.broadcast_object_list(message, src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    kind, value = message[0]
    if kind == "ok":
        return value
    if kind == "input_error":
        raise InputError(*value)
    raise RuntimeError(f"rank 0 failed: {value}")


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a float tensor over ranks (itself with one process). float64 on the CPU for
    gloo, the tensor's own device for NCCL."""
    if not active():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    summed = values.detach().to(device=device, dtype=torch.float64).clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(values.device)


def gather_rows(
    local: dict[str, np.ndarray], positions: np.ndarray, n_total: int
) -> dict[str, np.ndarray] | None:
    """Arrays whose rows are the items at ``positions`` of this rank, assembled in global order on rank 0
    (``n_total`` rows each); None on the other ranks. With one process, ``local`` itself. A rank with no
    items may pass an empty dict."""
    if not active():
        return local
    if not is_main():
        dist.gather_object((positions, local), None, dst=0)
        return None
    gathered: list[Any] = [None] * world_size()
    dist.gather_object((positions, local), gathered, dst=0)
    gathered = [(rank_positions, part) for rank_positions, part in gathered if len(rank_positions)]
    out: dict[str, np.ndarray] = {}
    for key in gathered[0][1] if gathered else ():
        first = gathered[0][1][key]
        full = np.empty((n_total, *first.shape[1:]), dtype=first.dtype)
        for rank_positions, part in gathered:
            full[rank_positions] = part[key]
        out[key] = full
    return out


# ---------------------------------------------------------------------------------------------- the model
class MethodAsForward(nn.Module):
    """A module whose ``forward`` is another module's method (DDP synchronises gradients of what runs
    through its wrapper's forward; the VAE's objective is its ``loss`` method)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


@contextmanager
def data_parallel(
    model: nn.Module, method: str, trainable: Sequence[nn.Parameter], find_unused_parameters: bool
) -> Iterator[Callable[..., Any]]:
    """Yields ``model.<method>`` whose backward averages gradients over ranks (DistributedDataParallel)
    when several processes run; the plain bound method otherwise.

    Only ``trainable`` parameters take part: the others get ``requires_grad=False`` inside the block (DDP
    would wait for their gradients forever otherwise) and it back when it ends. find_unused_parameters: some
    trainable parameters may get no gradient in a step (e.g. the pose head with given poses). Buffers are
    constants of the base structure, so they are not re-broadcast each step. The module's device decides
    the communication (gloo for CPU tensors, NCCL for CUDA ones); ``device_ids=None`` because batches are
    already on the device.
    """
    if not active():
        yield getattr(model, method)
        return
    keep = {id(p) for p in trainable}
    previous = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in previous:
        parameter.requires_grad_(id(parameter) in keep)
    try:
        yield nn.parallel.DistributedDataParallel(
            MethodAsForward(model, method),
            device_ids=None,
            find_unused_parameters=find_unused_parameters,
            **_no_buffer_sync_each_step(),
        )
    finally:
        for parameter, requires_grad in previous:
            parameter.requires_grad_(requires_grad)


def _no_buffer_sync_each_step() -> dict[str, Any]:
    # torch >= 2.12 names it forward_sync_buffers (and warns on broadcast_buffers); older versions only
    # know broadcast_buffers.
    parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return {name: False}


def broadcast_module(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (after initialisation or loading)."""
    if not active():
        return
    backend_cpu = dist.get_backend() != "nccl"
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if backend_cpu or tensor.device.type != "cuda":
                staged = tensor.detach().cpu().clone() if backend_cpu else tensor.detach().cuda().clone()
                dist.broadcast(staged, src=0)
                tensor.copy_(staged.to(tensor.device))
            else:
                dist.broadcast(tensor.data, src=0)
