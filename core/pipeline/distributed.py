"""A job as N data-parallel ranks (``resources.processes: N`` on CPU with gloo, ``resources.gpus: N`` on
CUDA with NCCL), launched from the caller's process, which stays the job's one point of contact.

**Launch.** :func:`run_distributed` starts N ranks with ``torch.multiprocessing.start_processes``
(``spawn``) rather than a ``torchrun`` subprocess: the caller's process (the worker's attempt, which
holds the lease and heartbeats it, or the CLI) must keep answering the ranks' callbacks (events,
progress, checkpoint and artifact uploads, the cancel poll), and a spawned rank keeps a queue to it
without a second protocol; ``ProcessContext.join`` gives what torchrun's agent gives on one host (a rank
that dies or raises is seen at once and the others are terminated). The ranks meet through a
``FileStore`` in a fresh temporary folder (no TCP port to pick or collide on). A job never spans hosts.

**Ranks.** Every rank runs ``core.pipeline.runner.run_rank`` on its shard of every global batch
(``core.data.loaders.EpochSampler``: batch ``i`` of all ranks together is batch ``i`` of a one-process
run with the same ``dataset.batch_size``). Gradients are averaged after ``backward`` by one flat
``all_reduce`` (``core.pipeline.resources.GradSync``), the model, its scores, the optimizer state and a
pruner's own parameters (the learned rates) stay identical on every rank, and so do the masks. The
``DistributedDataParallel`` wrapper is not used because the objectives run several forwards per step
(the training-time attacks take input gradients with ``torch.autograd.grad``), the pruner's hooks read
the averaged gradient between ``backward`` and the optimizer step, and the trainable set changes per
stage (weights, then scores); the averaging is the same arithmetic as DDP's reducer, without its overlap
of communication with the backward pass. ``resources.sync_bn`` converts BatchNorm to SyncBatchNorm
(CUDA only) for the training stages.

**Rank 0 alone** writes checkpoints, events, progress, artifacts and reports (its callbacks are sent to
the caller), validates every epoch and exports each variant. **The final evaluation is sharded**: rank 0
sends the exported network to every rank, each evaluates its block of whole batches of every sample
(benign, every attack, the certificate) and the per-example results are gathered in the sample's order,
so rank 0 computes the worst case over attacks, the metrics and their intervals from the same vectors as
a one-process run, bit for bit (core/pipeline/evaluate.py, "Sharded"). Cancel and SIGTERM: the caller's
``should_cancel`` (the row's cancel flag, the worker's shutdown, a lost lease) is passed to the ranks
through an event; during training every rank checks it at the same points and agrees by an
``all_reduce`` of the flag, so all stop at the same batch with ``RunCanceled``; during the sharded
evaluation (where ranks run different numbers of batches) each rank checks the event itself, the first
to stop fails the run as canceled and the caller ends the others. A caller killed outright (SIGKILL,
out of memory) leaves no rank behind: each rank watches the caller's pid and exits within a second or
two. A rank that dies or raises fails the run: the
others are terminated and the caller raises (:class:`RankFailed`, or the rank's own ``CoreError`` /
``RunCanceled``); the checkpoint of the last finished epoch stands and the next attempt resumes from it,
with any world size (a checkpoint holds no per-rank state).
"""

from __future__ import annotations

import datetime
import logging
import os
import queue as queue_mod
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as tmp

from core.callbacks import RunCallbacks
from core.errors import CoreError, RankFailed, RankLost, ResumeMismatch, RunCanceled
from core.pipeline.resources import World

if TYPE_CHECKING:
    from core.pipeline.runner import RunInputs
    from core.spec import JobSpec

log = logging.getLogger(__name__)

# core.pipeline.runner.run_rank: (spec, out, callbacks, resume, inputs, world) -> rank 0's report
RankEntry = Callable[..., dict[str, Any]]

# forkserver: every rank starts from a clean single-threaded server process (no threads, no CUDA context
# inherited from the caller, unlike fork), which has already imported torch and the pipeline, so a rank
# starts in well under a second instead of re-importing everything as spawn does.
START_METHOD = "forkserver"
# What the server imports once (per caller process) for every rank it forks: the pipeline, and the
# compiler stack that tracing and export pull in lazily (seconds of imports each).
PRELOAD = ["core.pipeline.runner", "torch._dynamo", "torchvision"]
POLL_S = 0.1  # the caller's loop: messages, the cancel poll, the ranks' liveness
CALLER_POLL_S = 1.0  # how often a rank checks that its caller still lives
ERROR_GRACE_S = 5.0  # after a rank failed: how long to wait for its error message
# A collective waits this long for a slow rank (rank 0 validates and exports alone while the others wait); a rank
# that dies is seen by the caller at once, so this bounds only a rank that hangs alive.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=48)


# ------------------------------------------------------------------------------------------ ranks
class RankCallbacks(RunCallbacks):
    """A rank's view of the caller's callbacks: rank 0 sends them to the caller (checkpoints and
    artifacts wait for the upload), the others send nothing. ``should_cancel`` is a collective."""

    def __init__(self, world: World, messages: Any, replies: Any, cancel: Any) -> None:
        self.world, self.messages, self.replies, self.cancel = world, messages, replies, cancel
        self.stop = False  # SIGTERM to this rank
        self.group: Any = None  # a gloo group for the CPU cancel flag when the default group is NCCL

    def _send(self, name: str, *args: Any, wait: bool = False, **kwargs: Any) -> None:
        if not self.world.main:
            return
        self.messages.put(("call", name, args, kwargs, wait))
        if wait:
            status, detail = self.replies.get()
            if status != "ok":
                raise RankFailed(f"the caller's {name} failed: {detail}")

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        self._send("on_event", kind, payload)

    def on_progress(self, **kwargs: Any) -> None:
        self._send("on_progress", **kwargs)

    def on_checkpoint(self, path: Path) -> None:
        self._send("on_checkpoint", path, wait=True)

    def on_artifact(self, name: str, path: Path, size: int, sha256: str) -> None:
        self._send("on_artifact", name, path, size, sha256, wait=True)

    def local_should_cancel(self) -> bool:
        return self.stop or self.cancel.is_set()

    def should_cancel(self) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.local_should_cancel() else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item() > 0)


def _encode(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, ResumeMismatch):
        return ("resume_mismatch", exc.fields)
    if isinstance(exc, CoreError):
        return ("core", exc.code, exc.field, exc.message)
    if isinstance(exc, RunCanceled):
        return ("canceled", str(exc))
    tail = "".join(traceback.format_exception(exc)).strip().splitlines()[-15:]
    return ("other", f"{type(exc).__name__}: {exc}", "\n".join(tail))


def _decode(rank: int, encoded: tuple[Any, ...]) -> BaseException:
    kind = encoded[0]
    if kind == "resume_mismatch":
        return ResumeMismatch(encoded[1])
    if kind == "core":
        return CoreError(encoded[1], encoded[2], encoded[3])
    if kind == "canceled":
        return RunCanceled(encoded[1])
    return RankFailed(f"rank {rank}: {encoded[1]}\n{encoded[2]}")


def _watch_caller(caller: int) -> None:
    """A rank outlives no caller: the ranks are forked by the forkserver, not by the caller, so a
    caller killed outright (SIGKILL, OOM) would leave them blocked on its queue; exit instead."""

    def watch() -> None:
        while True:
            time.sleep(CALLER_POLL_S)
            try:
                os.kill(caller, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # a pid reused by another user's process: the caller is gone
                os._exit(1)

    threading.Thread(target=watch, name="hydra-caller-watch", daemon=True).start()


def _rank_main(
    rank: int,
    entry: RankEntry,
    caller: int,
    size: int,
    backend: str,
    store_path: str,
    spec_json: str,
    out: str,
    resume: bool,
    inputs: RunInputs,
    messages: Any,
    replies: Any,
    cancel: Any,
    threads: int,
) -> None:
    """One rank (a spawned process): join the group, run ``run_rank``, report the outcome."""
    import torch.distributed as dist

    from core.spec import JobSpec

    _watch_caller(caller)
    # The caller's CPU threads shared out between the ranks (torchrun's OMP_NUM_THREADS=1 in spirit): with
    # torch's default, N ranks on a C-core host would each run C threads, N*C on C cores.
    torch.set_num_threads(threads)
    world = World(size, rank, backend)
    callbacks = RankCallbacks(world, messages, replies, cancel)

    def stop(signum: int, frame: Any) -> None:
        callbacks.stop = True  # agreed with the other ranks at the next batch: RunCanceled everywhere

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, which cancels the ranks
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        store = dist.FileStore(store_path, size)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
        if backend == "nccl":  # the cancel flag is a CPU tensor: a gloo group beside NCCL carries it
            callbacks.group = dist.new_group(backend="gloo")
        report = entry(JobSpec.model_validate_json(spec_json), Path(out), callbacks, resume, inputs, world)
        if world.main:
            messages.put(("done", report))
    except BaseException as exc:
        messages.put(("error", rank, _encode(exc)))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ caller
def run_distributed(
    spec: JobSpec, out: Path, callbacks: RunCallbacks, resume: bool, inputs: RunInputs, entry: RankEntry
) -> dict[str, Any]:
    """Run ``spec`` as ``spec.resources.world_size`` ranks, each calling ``entry`` (the runner's
    ``run_rank``, handed in so this module does not import the runner); returns rank 0's report. The
    caller's ``callbacks`` are called from this process only (see the module docstring)."""
    size, backend = spec.resources.world_size, spec.resources.backend
    ctx = tmp.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    messages, replies, cancel = ctx.Queue(), ctx.Queue(), ctx.Event()
    rendezvous = tempfile.mkdtemp(prefix="hydra-ranks-")
    args = (
        entry,
        os.getpid(),
        size,
        backend,
        os.path.join(rendezvous, "store"),
        spec.model_dump_json(),
        str(out),
        resume,
        inputs,
        messages,
        replies,
        cancel,
        max(1, torch.get_num_threads() // size),
    )
    procs = tmp.start_processes(_rank_main, args=args, nprocs=size, join=False, start_method=START_METHOD)
    report: dict[str, Any] | None = None
    errors: list[BaseException] = []
    try:
        while True:
            report = _drain(messages, replies, callbacks, errors, report)
            if callbacks.should_cancel():
                cancel.set()
            try:
                if procs.join(timeout=POLL_S):
                    report = _drain(messages, replies, callbacks, errors, report)
                    break
            except tmp.ProcessExitedException as exc:  # died: the others' errors are its consequences
                raise RankLost(f"a rank of the job died ({size} ranks, {backend}): {exc}") from None
            except tmp.ProcessRaisedException as exc:
                deadline = time.monotonic() + ERROR_GRACE_S
                while not errors and time.monotonic() < deadline:  # the rank's own error, if it sent one
                    report = _drain(messages, replies, callbacks, errors, report, block=True)
                if errors:
                    raise _first(errors, cancel.is_set()) from None
                raise RankFailed(f"a rank of the job failed ({size} ranks, {backend}): {exc}") from None
        if errors:
            raise _first(errors, cancel.is_set())
        if report is None:
            raise RankFailed("the ranks finished without a report")
        return report
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
        for p in procs.processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(rendezvous, ignore_errors=True)


def _first(errors: list[BaseException], canceled: bool) -> BaseException:
    """The run's error: a rank's ``RunCanceled`` when the caller asked to stop (the other ranks' errors
    are then its consequences: a rank waiting in a collective for one that stopped), else rank 0's,
    else the first."""
    if canceled:
        stops = [e for e in errors if isinstance(e, RunCanceled)]
        return stops[0] if stops else RunCanceled(f"canceled; the ranks stopped with: {errors[0]}")
    return errors[0]


def _drain(
    messages: Any,
    replies: Any,
    callbacks: RunCallbacks,
    errors: list[BaseException],
    report: dict[str, Any] | None,
    block: bool = False,
) -> dict[str, Any] | None:
    """Handle every message waiting from the ranks (``block``: wait a moment for the first)."""
    while True:
        try:
            message = messages.get(timeout=POLL_S) if block else messages.get_nowait()
        except queue_mod.Empty:
            return report
        block = False
        if message[0] == "call":
            _, name, args, kwargs, wait = message
            try:
                getattr(callbacks, name)(*args, **kwargs)
            except Exception as exc:
                if wait:
                    replies.put(("error", f"{type(exc).__name__}: {exc}"))
                raise
            if wait:
                replies.put(("ok", None))
        elif message[0] == "done":
            report = message[1]
        elif message[0] == "error":
            err = _decode(message[1], message[2])
            # Rank 0's error first; a canceled run is canceled, not failed, on whichever rank said so.
            errors.insert(0 if message[1] == 0 else len(errors), err)


__all__ = ["RankCallbacks", "RankFailed", "RankLost", "run_distributed"]
