"""What a variant costs at inference, next to the dense network measured in the same process.

* **Parameters**: every parameter of the plain network (masked layers: without their scores), and the
  nonzeros among them (what an unstructured variant really needs).
* **MACs**: Torch-Pruning's ``tp.utils.count_ops_and_params`` on a plain copy (effective weights), i.e.
  multiply-accumulates of the layer shapes — the dense count for an unstructured variant, the smaller
  one for a rebuilt channel variant; ``sparse_macs`` counts only the nonzero weights of conv/linear.
* **Latency**: median seconds per forward at a batch size, ``torch.inference_mode``, warmup first, the
  networks timed *interleaved* round by round (a shared machine's load hits both alike), each sample
  long enough (several calls) to dwarf the timer; the same thread count for every network
  (``threads``; torch ``set_num_threads`` / onnxruntime ``intra_op_num_threads``), restored after.
* **Peak inference memory**: CUDA — ``torch.cuda.max_memory_allocated`` over one forward, after
  ``reset_peak_memory_stats``, with the network and the input already on the device (weights +
  activations + workspaces the allocator serves). CPU — ``tracemalloc`` does not see torch's allocator
  and RSS deltas mostly show allocator caching, so we count tensors: the parameter and buffer bytes
  plus the peak of *live tensor bytes* during one ``no_grad`` forward, tracked by a
  ``TorchDispatchMode`` that sees every aten operator's outputs, counts each new storage once (views
  of existing storages — weights, the input — are not new) and subtracts it when the last Python
  reference to it dies. Kernel-internal scratch (e.g. oneDNN workspaces) is not a tensor and not
  counted. Both are stated in ``method``.
Ratios are ``variant / dense`` (``speedup`` = dense / variant for latency).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.pruning.masked import MaskedConv2d, MaskedLinear, masked_layers
from core.pruning.structured import to_plain


# ------------------------------------------------------------------ counts
def count_params(model: nn.Module) -> int:
    """Parameters of the network as deployed (a masked layer's scores are not part of it)."""
    scores = {id(layer.scores) for _, layer in masked_layers(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in scores)


@torch.no_grad()
def count_nonzero_params(model: nn.Module) -> int:
    """Nonzero parameters, conv/linear weights taken as their effective weights ``W ⊙ M``."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, (MaskedConv2d, MaskedLinear)):
                if name == "scores":
                    continue
                if name == "weight":
                    total += int(module.effective_weight().count_nonzero())
                    continue
            total += int(p.count_nonzero())
    return total


def count_macs(model: nn.Module, example_input: Tensor) -> int:
    """Multiply-accumulates of one forward of ``example_input`` (Torch-Pruning's counter, plain copy)."""
    import torch_pruning as tp

    plain = to_plain(model).eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(plain, example_input)
    return int(macs)


@torch.no_grad()
def sparse_macs(model: nn.Module, example_input: Tensor) -> int:
    """MACs of conv/linear layers counting only nonzero (effective) weights: ``nnz(W) · positions``."""
    total = [0]

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        weight = module.effective_weight() if hasattr(module, "effective_weight") else module.weight
        positions = output[0].numel() // output.shape[1] if output.dim() > 2 else 1
        total[0] += int(weight.count_nonzero()) * positions * output.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


# ------------------------------------------------------------------ latency
@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (nothing when ``None``)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median_seconds(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 15,
    warmup: int = 3,
    min_sample_s: float = 0.02,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, timed interleaved (one sample of each per round, the
    order rotating); a sample is as many calls as make it last ``min_sample_s``."""
    sync = sync or (lambda: None)
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        once = max(time.perf_counter() - t0, 1e-6)
        calls[name] = max(1, math.ceil(min_sample_s / once))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = fns[name], calls[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(v) for name, v in samples.items()}


def torch_forward(
    model: nn.Module, batch: int, input_shape: Sequence[int], device: str | torch.device = "cpu", seed: int = 0
) -> Callable[[], Any]:
    """A no-argument callable running one ``inference_mode`` forward of ``model`` (eval) at ``batch``."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(seed)).to(device)

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def ort_session(path: str, threads: int | None = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def ort_forward(session: Any, batch: int, input_shape: Sequence[int], seed: int = 0) -> Callable[[], Any]:
    """A no-argument callable running ``session`` once on a random batch."""
    x = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(seed)).numpy()
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _sync_for(device: str | torch.device) -> Callable[[], None] | None:
    device = torch.device(device)
    return torch.cuda.synchronize if device.type == "cuda" else None


# ------------------------------------------------------------------ memory
class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created during the block (see the module docstring)."""

    def __init__(self, existing: Sequence[Tensor]) -> None:
        super().__init__()
        self._old = {t.untyped_storage().data_ptr() for t in existing}
        self._live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self._track(t)
        return out

    def _track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._old:
            return
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._live[key]
            self.current -= entry[0]


def _state_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


@torch.no_grad()
def peak_memory_bytes(
    model: nn.Module, batch: int, input_shape: Sequence[int], device: str | torch.device = "cpu"
) -> int:
    """Peak bytes of one inference forward at ``batch``: weights + input + live activations (CPU,
    counted tensors) or the CUDA allocator's peak (see the module docstring). Masked layers are
    measured as their plain copies (scores are not part of the deployed network)."""
    device = torch.device(device)
    plain = to_plain(model).to(device).eval()
    x = torch.rand((batch, *input_shape)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        plain(x)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    existing = list(plain.parameters()) + list(plain.buffers()) + [x]
    tracker = _LiveTensorBytes(existing)
    with tracker:
        out = plain(x)
        del out
    return _state_bytes(plain) + x.untyped_storage().nbytes() + tracker.peak


# ------------------------------------------------------------------ one comparison
def _ratio(dense: float, variant: float) -> dict[str, float]:
    return {"dense": dense, "variant": variant, "ratio": variant / dense if dense else float("nan")}


def compare_to_dense(
    dense: nn.Module,
    variant: nn.Module,
    input_shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    dense_onnx: str | None = None,
    variant_onnx: str | None = None,
    batches: Sequence[int] = (1, 64),
    repeats: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    latency: bool = True,
) -> dict[str, Any]:
    """Parameters, MACs, latency (torch on ``device``, onnxruntime CPU when both ONNX files are given)
    at each batch size, and peak memory at the largest batch — dense and variant measured in this
    process, with their ratios. Keys: ``params``, ``nonzero_params``, ``macs``, ``sparse_macs``,
    ``latency`` (``torch_<device>_b<N>``, ``ort_cpu_b<N>`` → dense/variant/ratio/speedup; empty when
    ``latency`` is False), ``peak_memory`` and ``method`` (how each was measured)."""
    x1 = torch.rand((1, *input_shape))
    out: dict[str, Any] = {
        "params": _ratio(count_params(dense), count_params(variant)),
        "nonzero_params": _ratio(count_nonzero_params(dense), count_nonzero_params(variant)),
        "macs": _ratio(count_macs(dense, x1), count_macs(variant, x1)),
        "sparse_macs": _ratio(sparse_macs(dense, x1), sparse_macs(variant, x1)),
        "latency": {},
    }
    device = torch.device(device)
    plain_dense, plain_variant = to_plain(dense), to_plain(variant)
    with torch_threads(threads):
        for b in batches if latency else ():
            times = median_seconds(
                {
                    "dense": torch_forward(plain_dense, b, input_shape, device),
                    "variant": torch_forward(plain_variant, b, input_shape, device),
                },
                repeats=repeats,
                warmup=warmup,
                sync=_sync_for(device),
            )
            out["latency"][f"torch_{device.type}_b{b}"] = {
                **_ratio(times["dense"], times["variant"]),
                "speedup": times["dense"] / times["variant"],
            }
        if latency and dense_onnx and variant_onnx:
            sessions = {"dense": ort_session(dense_onnx, threads), "variant": ort_session(variant_onnx, threads)}
            for b in batches:
                times = median_seconds(
                    {k: ort_forward(s, b, input_shape) for k, s in sessions.items()}, repeats=repeats, warmup=warmup
                )
                out["latency"][f"ort_cpu_b{b}"] = {
                    **_ratio(times["dense"], times["variant"]),
                    "speedup": times["dense"] / times["variant"],
                }
    b = max(batches)
    out["peak_memory"] = {
        "batch": b,
        **_ratio(peak_memory_bytes(dense, b, input_shape, device), peak_memory_bytes(variant, b, input_shape, device)),
    }
    out["method"] = {
        "latency": (
            f"median of {repeats} interleaved samples after {warmup} warmup calls, torch.inference_mode "
            f"(onnxruntime: CPUExecutionProvider), threads={threads if threads is not None else torch.get_num_threads()}"
            if latency
            else "not measured"
        ),
        "peak_memory": (
            "torch.cuda.max_memory_allocated over one forward"
            if device.type == "cuda"
            else "parameter+buffer+input bytes plus the peak of live tensor bytes in one forward "
            "(TorchDispatchMode storage tracking)"
        ),
        "macs": "torch_pruning.utils.count_ops_and_params (layer shapes)",
    }
    return out
