"""Runs across processes, GPUs and machines with ``torch.distributed`` (launched by ``torchrun``).

focusshot builds no scheduler and no transport of its own. ``torchrun`` (or SLURM / Kubernetes
through it) starts one process per rank and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` reads them and joins the process group (NCCL on GPUs, Gloo on CPUs). The work is
then split by index:

* **extraction**: rank ``r`` computes the cache entries of images ``r, r + W, r + 2W, ...``
  (the shared cache is safe for concurrent writers); after a barrier every rank reads all of
  them from disk;
* **episodes** (or the split protocol's ``(K, seed, method)`` runs): rank ``r`` runs the units
  whose index is ``r`` modulo ``W`` and appends its rows to its own shard of the result log;
  rank 0 merges the shards into ``results.jsonl`` in the order a one-process run writes it and
  then writes the summaries (:meth:`focusshot.evaluation.results.ResultLog.merge`).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one process.
The output folder and the feature cache must be on a file system every rank sees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

#: set in the environment of processes that :func:`launch_local` started
LAUNCHED = "FOCUSSHOT_WORKER"
#: how long a rank waits for the others at a barrier: a rank may train for hours more than another
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Context:
    """Where this process sits in the job: rank ``rank`` of ``world``, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the run's merged results, summaries and figures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one process shares the work."""
        return self.world > 1

    def owns(self, index: int) -> bool:
        """Whether unit ``index`` (an episode, a split run) is this rank's to do."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a one-process run)."""
        if self.active:
            dist.barrier()

    def broadcast(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank (so that all ranks take the same branch)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def wait_all(self, tick: Callable[[], None] | None = None, every_s: float = 0.5) -> None:
        """Barrier that calls ``tick`` every ``every_s`` seconds while waiting (rank 0's progress bar)."""
        if not self.active:
            return
        work = dist.barrier(async_op=True)
        while not work.is_completed():
            if tick is not None:
                tick()
            time.sleep(every_s)
        work.wait()
        if tick is not None:
            tick()


_CONTEXT: Context | None = None


def resolve_device(spec: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's local GPU (``cuda:LOCAL_RANK``) where there is one, else the CPU;
    ``"cuda"`` in a multi-process job: ``cuda:LOCAL_RANK``; anything else as torch reads it.

    Raises:
        ValueError: ``spec`` names a CUDA device but CUDA is not available (naming ``--device``).
    """
    text = str(spec)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"--device: {text!r} is not a torch device ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def setup(device: str | torch.device = "cpu") -> Context:
    """This process's :class:`Context`, joining the process group when ``torchrun`` started it.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 initialises
    ``torch.distributed`` (NCCL when the device is a GPU, Gloo otherwise; rendezvous from
    ``MASTER_ADDR``/``MASTER_PORT`` as torchrun sets them) unless the caller already did.
    """
    global _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    backend: str | None = None
    if world > 1:
        if dist.is_initialized():
            backend = dist.get_backend()
        else:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            per_rank = str(device) in ("auto", "cuda")  # each local rank picks cuda:LOCAL_RANK
            own_gpu = dev.type == "cuda" and per_rank and local <= torch.cuda.device_count()
            # NCCL when every local rank has a GPU of its own; ranks sharing a GPU (more workers
            # than GPUs) use Gloo, which NCCL refuses. Our collectives carry no GPU tensors.
            backend = "nccl" if own_gpu else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    _CONTEXT = Context(rank, world, local_rank, dev, backend)
    return _CONTEXT


def ensure(device: str | torch.device = "cpu") -> Context:
    """The context already set up in this process, else :func:`setup` with ``device``."""
    return _CONTEXT if _CONTEXT is not None else setup(device)


def current() -> Context:
    """The context :func:`setup` made, or a one-process context when it was not called."""
    return _CONTEXT if _CONTEXT is not None else Context()


def teardown(wait: bool = True) -> None:
    """Leave the process group: with ``wait``, after every rank got here (so no rank exits while
    rank 0 still writes the run's files), then ``destroy_process_group`` (a gloo group left open
    at exit can abort the process)."""
    global _CONTEXT
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    _CONTEXT = None


def launch_local(workers: int, argv: list[str]) -> int:
    """Run ``python -m focusshot ARGV`` in ``workers`` processes on this machine through torch's
    elastic launcher (what ``torchrun --standalone --nproc-per-node WORKERS`` does).

    Each worker gets ``cpu_count // workers`` CPU threads (``OMP_NUM_THREADS``) unless the
    variable is already set, so the workers together use the machine's cores once.
    """
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    os.environ[LAUNCHED] = "1"  # the workers run their share, whatever --workers their argv holds
    args = parse_args(["--standalone", f"--nproc-per-node={workers}", "-m", "focusshot", *argv])
    try:
        run(args)
    except Exception as exc:  # ChildFailedError: the failing rank's traceback was printed above it
        import sys

        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: a worker failed: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0
