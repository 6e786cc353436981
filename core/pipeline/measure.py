"""What a variant costs at inference, next to the dense network measured in the same process.

* **Parameters**: every parameter of the plain network (masked layers: without their scores), and the
  nonzeros among them (what an unstructured variant really needs).
* **MACs**: Torch-Pruning's ``tp.utils.count_ops_and_params`` on a plain copy (effective weights), i.e.
  multiply-accumulates of the layer shapes — the dense count for an unstructured variant, the smaller
  one for a rebuilt channel variant; ``sparse_macs`` counts only the nonzero weights of conv/linear.
* **Latency**: seconds per forward at a batch size (median and interquartile range), ``torch.inference_mode``, warmup first, the networks timed *interleaved*
  round by round (a shared machine's load hits both alike), each sample long enough (several calls)
  to dwarf the clock; the same thread count for every network (``threads``; torch
  ``set_num_threads`` / onnxruntime ``intra_op_num_threads``), restored after. A speed-up is claimed
  only when its 95% interval lies more than 5% from 1; otherwise it reads "not measurable at this size".
* **Peak inference memory**: CUDA — ``torch.cuda.max_memory_allocated`` over one forward, after
  ``reset_peak_memory_stats``, with the network and the input already on the device (weights +
  activations + workspaces the allocator serves). CPU — ``tracemalloc`` does not see torch's allocator
  and RSS deltas mostly show allocator caching, so we count tensors: the parameter and buffer bytes
  plus the peak of *live tensor bytes* during one ``no_grad`` forward, tracked by a
  ``TorchDispatchMode`` that sees every aten operator's outputs, counts each new storage once (views
  of existing storages — weights, the input — are not new) and subtracts it when the last Python
  reference to it dies. Kernel-internal scratch (e.g. oneDNN workspaces) is not a tensor and not
  counted. Both are stated in ``method``.
Ratios are ``variant / dense`` for sizes and memory; latency has only ``speedup`` = dense time / variant
time (one convention everywhere), with its interval and a verdict (:func:`speedup_entry`).
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


def _median_ci_ranks(n: int, level: float = 0.95) -> tuple[int, int]:
    """0-based ranks ``(lo, hi)`` of the order statistics bracketing the median with at least ``level``
    coverage, distribution-free (the sign-test interval: ``P(lo < rank of the median <= hi)`` from
    Binomial(n, 1/2)). With fewer than 6 samples no such interval exists at 95%: the whole range."""
    from scipy.stats import binom

    k = int(binom.ppf((1 - level) / 2, n, 0.5))  # P(X <= k - 1) <= (1 - level) / 2
    while k > 0 and binom.cdf(k - 1, n, 0.5) > (1 - level) / 2:
        k -= 1
    return (k - 1, n - k) if k >= 1 else (0, n - 1)


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 15,
    warmup: int = 3,
    min_sample_s: float = 0.02,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Seconds per call of each function: ``median``, ``q1``/``q3`` (the interquartile range) and the
    raw ``samples``, one sample of each function per round (the order rotating), so a shared machine's
    load hits every function alike. A sample is ``calls`` back-to-back calls lasting at least
    ``min_sample_s`` (far above the clock's resolution); ``sync`` (CUDA) runs before each clock read.
    ``single_call_s`` is one call's time after warm-up; ``below_resolution`` says it was under 1,000
    ticks of the clock (then no per-call time is trustworthy).

    Our own loop rather than ``torch.utils.benchmark.Timer``: the Timer measures one statement at a
    time (no interleaving of the dense and the pruned network round by round, which is what makes
    their ratio robust to a shared machine's load), and its ``timeit`` adds two warm-up calls to every
    sample, tripling the cost of timing a network whose one call already fills a sample. The
    statistics (median, IQR, the median's interval) are the same as its ``Measurement``'s."""
    sync = sync or (lambda: None)
    resolution = time.get_clock_info("perf_counter").resolution
    calls: dict[str, int] = {}
    single: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        single[name] = max(time.perf_counter() - t0, 1e-9)
        calls[name] = max(1, math.ceil(min_sample_s / single[name]))
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
    out: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        q1, q3 = _quartiles(values)
        out[name] = {
            "median": statistics.median(values),
            "q1": q1,
            "q3": q3,
            "samples": values,
            "calls": calls[name],
            "single_call_s": single[name],
            "below_resolution": single[name] < 1000 * resolution,
        }
    return out


def median_seconds(fns: dict[str, Callable[[], Any]], **timing: Any) -> dict[str, float]:
    """Median seconds per call of each function: :func:`time_interleaved`'s medians (``timing``: its
    keywords, ``repeats``, ``warmup``, ``min_sample_s``, ``sync``)."""
    return {name: t["median"] for name, t in time_interleaved(fns, **timing).items()}


NOT_MEASURABLE = "not measurable at this size"
# A speed-up is claimed only when its whole 95% interval lies beyond 5% either way: below that, the
# interleaved timing of two identical networks on a shared machine can still drift apart.
NOISE_BAND = 1.05


def speedup_entry(dense: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """Dense against variant, from two :func:`time_interleaved` results of the same rounds.

    ``speedup`` = dense time / variant time (the one convention of every report): the median of the
    per-round ratios (each round timed both networks back to back), with its distribution-free 95%
    interval (``speedup_ci95``). ``verdict`` is ``faster`` or ``slower`` only when that interval lies
    wholly beyond ``NOISE_BAND`` (5%) from 1 and neither call was below the clock's resolution;
    otherwise ``not measurable at this size`` and ``measurable`` False: the difference is within the
    timing noise, so no speed-up is claimed."""
    ratios = sorted(d / v for d, v in zip(dense["samples"], variant["samples"]) if v > 0)
    lo_rank, hi_rank = _median_ci_ranks(len(ratios))
    lo, hi = ratios[lo_rank], ratios[hi_rank]
    resolved = not (dense["below_resolution"] or variant["below_resolution"])
    measurable = resolved and (lo > NOISE_BAND or hi < 1 / NOISE_BAND)
    return {
        "dense": dense["median"],
        "variant": variant["median"],
        "dense_iqr": [dense["q1"], dense["q3"]],
        "variant_iqr": [variant["q1"], variant["q3"]],
        "speedup": statistics.median(ratios),
        "speedup_ci95": [lo, hi],
        "samples": len(ratios),
        "measurable": measurable,
        "verdict": ("faster" if lo > NOISE_BAND else "slower") if measurable else NOT_MEASURABLE,
    }


def latency_text(entry: Any, which: str = "variant") -> str:
    """One network's time per call with its IQR: ``0.412 ms [0.405–0.420]``."""
    if not isinstance(entry, dict) or not isinstance(entry.get(which), (int, float)):
        return "–"
    iqr = entry.get(f"{which}_iqr")
    spread = f" [{iqr[0] * 1e3:.3g}–{iqr[1] * 1e3:.3g}]" if isinstance(iqr, list) and len(iqr) == 2 else ""
    return f"{entry[which] * 1e3:.3g} ms{spread}"


def speedup_text(entry: Any) -> str:
    """The speed-up (dense time / this network's time) with its 95% interval, or why none is claimed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("speedup"), (int, float)):
        return "–"
    ci: list[float] = entry.get("speedup_ci95") or []
    has_ci = len(ci) == 2
    if "measurable" in entry and not entry["measurable"]:
        why = f" (the speed-up's 95% interval {ci[0]:.2f}–{ci[1]:.2f} reaches within 5% of 1)" if has_ci else ""
        return NOT_MEASURABLE + why
    if has_ci:
        return f"speed-up {entry['speedup']:.2f}x (95% {ci[0]:.2f}–{ci[1]:.2f})"
    return f"speed-up {entry['speedup']:.2f}x"  # a report of the previous format: no interval


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
            timed = time_interleaved(
                {
                    "dense": torch_forward(plain_dense, b, input_shape, device),
                    "variant": torch_forward(plain_variant, b, input_shape, device),
                },
                repeats=repeats,
                warmup=warmup,
                sync=_sync_for(device),
            )
            out["latency"][f"torch_{device.type}_b{b}"] = speedup_entry(timed["dense"], timed["variant"])
        if latency and dense_onnx and variant_onnx:
            sessions = {"dense": ort_session(dense_onnx, threads), "variant": ort_session(variant_onnx, threads)}
            for b in batches:
                timed = time_interleaved(
                    {k: ort_forward(s, b, input_shape) for k, s in sessions.items()}, repeats=repeats, warmup=warmup
                )
                out["latency"][f"ort_cpu_b{b}"] = speedup_entry(timed["dense"], timed["variant"])
    b = max(batches)
    out["peak_memory"] = {
        "batch": b,
        **_ratio(peak_memory_bytes(dense, b, input_shape, device), peak_memory_bytes(variant, b, input_shape, device)),
    }
    out["method"] = {
        "latency": (
            f"{repeats} interleaved samples per network (each >= 20 ms of calls) "
            f"after {warmup} warm-up calls, torch.inference_mode (onnxruntime: CPUExecutionProvider), "
            f"threads={threads if threads is not None else torch.get_num_threads()}; time = median [IQR]; "
            "speed-up = dense time / this network's time, the median of per-round ratios with its "
            f"distribution-free 95% interval; '{NOT_MEASURABLE}' when that interval reaches within 5% of 1"
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
