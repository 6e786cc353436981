"""A variant's files, the network its evaluation attacks, and what it costs at inference.

* **Files** (:func:`export_variant`): every format of ``export.formats`` — the lossless sparse
  ``compressed`` safetensors, the ``dense`` safetensors, the ``onnx`` graph — and, for a
  channel-granularity variant, always the physically smaller network (``core.pruning.structured``
  rebuild, ``core.io.export_channel``: ``<variant>.channel.safetensors`` with its widths).
* **The evaluated network** is reloaded from its file, as a user would load it: the channel artifact for a
  channel variant, else the compressed one (else, with neither exported, the in-memory network).
* **ONNX** is exported from that evaluated network (so the graph is what was attacked; for a channel
  variant, the smaller network) and checked with onnxruntime against PyTorch on the CPU
  (``check_onnx_parity``, atol ``PARITY_ATOL``) on real test inputs; the check goes into the variant's
  ``checks``. A graph that cannot be exported or fails the check is not shipped; the check says why.
* **Inference cost** (:func:`inference_cost`): ``core.pipeline.measure.compare_to_dense`` between the
  evaluated network and the dense network's evaluated file, in this process, with the spec's
  ``evaluation.measure_*`` settings.

Nothing here may move the run's random-number streams (a later variant trains on them): what draws
random numbers (building a network to load, the measurement inputs) runs inside :func:`rng_kept`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CoreError
from core.models.onnx_network import fresh_network_of
from core.pipeline.evaluate import sparsity_from_channel_export, sparsity_from_export
from core.pipeline.plan import Step
from core.pruning.masked import masked_layers
from core.spec import JobSpec
from core.vocab import CHANNEL, ONNX, artifact_name

ArtifactCallback = Callable[[str, Path, int, str], None]


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Run the block without moving the global CPU (and the device's CUDA) random-number state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def example_batch(dataset: Any, device: torch.device, n: int = 8) -> Tensor:
    """The first ``n`` test inputs: what channel groups are traced with, the rebuild is verified on,
    and the ONNX graph is checked on."""
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))]).to(device)


@dataclass
class Exported:
    artifacts: dict[str, Any]
    network: nn.Module
    evaluated: str
    checks: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    #: counted from the evaluated file (``variant_sparsity``); None when neither it nor a compressed one exists
    sparsity: dict[str, Any] | None = None


def _record(out: dict[str, Any], key: str, name: str, info: dict[str, Any], path: Path, cb: ArtifactCallback) -> None:
    out[key] = {"name": name, "size": info["size"], "sha256": info["sha256"]}
    cb(name, path, info["size"], info["sha256"])


def export_variant(
    model: nn.Module,
    out_dir: Path,
    spec: JobSpec,
    step: Step,
    info: dict[str, Any],
    example: Tensor,
    device: torch.device,
    on_artifact: ArtifactCallback,
) -> Exported:
    """Write the variant's files (module docstring) and reload the network to evaluate."""
    from core.io.export import export_compressed, export_dense
    from core.io.plain_code import torch_nn_source

    build = fresh_network_of(model)  # an imported ONNX network: reloads go into the same graph
    source = getattr(model, "source", None)
    meta = {
        "arch": spec.model.arch,
        **({"onnx_sha256": source.sha256} if source is not None else {}),
        "kwargs": {**spec.model.kwargs, "num_classes": info["num_classes"]},
        "variant": step.variant,
        "method": step.method or "dense",
        "k": step.k,
        "seed": step.seed,
    }
    artifacts: dict[str, Any] = {}
    for fmt in spec.export.formats:
        if fmt == ONNX:
            continue
        name = artifact_name(step.variant, fmt)
        writer = export_compressed if fmt == "compressed" else export_dense
        _record(artifacts, fmt, name, writer(model, out_dir / name, meta), out_dir / name, on_artifact)
    extras: dict[str, Any] = {}
    if source is not None:  # the user's graph this network was converted from (report, model card)
        extras["source_graph"] = source.describe()
    if step.method is not None and spec.pruning.granularity == "channel":
        with rng_kept(device):
            extras["channels"] = _export_channel(model, out_dir, step, meta, info, example, artifacts, on_artifact)
    evaluated_fmt = next((f for f in (CHANNEL, "compressed") if f in artifacts), None)
    if evaluated_fmt is None:
        network, evaluated = model, "the in-memory network (no compressed export)"
    else:
        # A compressed reload draws the fresh network's initial weights from the run's RNG, as it always
        # has (uniform jobs stay bit-for-bit what they were); the channel reload leaves the RNG alone.
        kept = rng_kept(device) if evaluated_fmt == CHANNEL else contextlib.nullcontext()
        with kept:
            network = load_exported(out_dir, artifacts, evaluated_fmt, build).to(device).eval()
        evaluated = "the exported network, reloaded from " + artifacts[evaluated_fmt]["name"]
    with rng_kept(device):  # building the plain copy draws initial weights: keep the run's RNG as it was
        plain = torch_nn_source(network, tuple(info["input_shape"]))
    if plain is not None:
        # the channel file holds the whole NormalizedModel's tensors (net.* and normalize.*), the dense
        # file only the plain network's
        plain_file = CHANNEL if CHANNEL in artifacts else "dense"
        loads = artifacts.get(plain_file, {}).get("name")
        extras["plain_definition"] = {**plain, "loads": loads, "prefix": "net." if plain_file == CHANNEL else ""}
    checks: dict[str, Any] = {}
    if ONNX in spec.export.formats:
        with rng_kept(device):
            checks["onnx_parity"] = _export_onnx(network, out_dir, step, meta, example, artifacts, on_artifact)
    return Exported(artifacts, network, evaluated, checks, extras, variant_sparsity(model, out_dir, artifacts))


def load_exported(
    out_dir: Path, artifacts: dict[str, Any], fmt: str, build: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """The network of one exported file (plain layers, eval mode); ``build`` makes the fresh network
    for one no catalogue name rebuilds (an imported ONNX graph)."""
    from core.io.export import load_compressed_model
    from core.io.export_channel import load_channel_pruned

    path = out_dir / artifacts[fmt]["name"]
    return (load_channel_pruned(path, build) if fmt == CHANNEL else load_compressed_model(path, build)).eval()


def _export_channel(
    model: nn.Module,
    out_dir: Path,
    step: Step,
    meta: dict[str, Any],
    info: dict[str, Any],
    example: Tensor,
    artifacts: dict[str, Any],
    on_artifact: ArtifactCallback,
) -> dict[str, dict[str, int]]:
    """The rebuilt smaller network; returns per coupled group (root layer) its channels and the kept ones."""
    from core.io.export_channel import export_channel_pruned
    from core.pruning.structured import rebuild_pruned

    small, widths = rebuild_pruned(model, example)  # verifies the rebuilt logits on the example
    name = artifact_name(step.variant, CHANNEL)
    shape = list(info.get("input_shape") or example.shape[1:])
    written = export_channel_pruned(small, widths, out_dir / name, meta, shape)
    _record(artifacts, CHANNEL, name, written, out_dir / name, on_artifact)
    full = {
        name: (layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features)
        for name, layer in masked_layers(model)
    }
    return {layer: {"channels": full.get(layer, w), "kept": w} for layer, w in widths.items()}


def _export_onnx(
    network: nn.Module,
    out_dir: Path,
    step: Step,
    meta: dict[str, Any],
    example: Tensor,
    artifacts: dict[str, Any],
    on_artifact: ArtifactCallback,
) -> dict[str, Any]:
    from core.io.export_onnx import PARITY_ATOL, check_onnx_parity, export_onnx

    name = artifact_name(step.variant, ONNX)
    path = out_dir / name
    check: dict[str, Any] = {
        "atol": PARITY_ATOL,
        "inputs": int(example.shape[0]),
        "rule": "onnxruntime (CPU) logits against PyTorch's (CPU) on the first test inputs; the file ships "
        "only if they agree within atol",
    }
    cpu = copy.deepcopy(network).cpu().eval()
    source = getattr(network, "source", None)  # an imported ONNX network keeps the user's names and opset
    names: dict[str, Any] = {}
    if source is not None:
        names = {"input_name": source.input_name, "output_name": source.output_name}
        check["names"] = {"input": source.input_name, "output": source.output_name, "opset": source.opset}
    try:
        # onnx2torch's modules export themselves through the TorchScript exporter (their own symbolic
        # functions); torch.export cannot trace their data-dependent shape handling (Reshape).
        how: dict[str, Any] = {"opset": source.opset, "exporter": "torchscript"} if source is not None else {}
        written = export_onnx(cpu, path, example.cpu(), metadata=meta, **names, **how)
        check["max_abs_diff"] = check_onnx_parity(path, cpu, example.cpu(), atol=PARITY_ATOL, **names)
    except CoreError as err:
        path.unlink(missing_ok=True)
        return {**check, "ok": False, "error": f"{err.code}: {err.message}"}
    _record(artifacts, ONNX, name, written, path, on_artifact)
    return {**check, "ok": True}


def variant_sparsity(model: nn.Module, out_dir: Path, artifacts: dict[str, Any]) -> dict[str, Any] | None:
    """Sparsity counted from the evaluated file (channel artifact against the full-width layers, else
    the compressed one); None when neither was exported."""
    if CHANNEL in artifacts:
        sizes = {name: layer.weight.numel() for name, layer in masked_layers(model)}
        return sparsity_from_channel_export(out_dir / artifacts[CHANNEL]["name"], sizes)
    if "compressed" in artifacts:
        names = [name for name, _ in masked_layers(model)]
        return sparsity_from_export(out_dir / artifacts["compressed"]["name"], names)
    return None


def layer_rates(spec: JobSpec, sparsity: dict[str, Any]) -> dict[str, Any]:
    """Per-layer keep rates (kept / weights) of a pruned variant, from its measured sparsity."""
    layers = {
        name: {"n": int(row["n"]), "kept": int(row["nnz"]), "rate": row["nnz"] / row["n"] if row["n"] else 0.0}
        for name, row in sparsity["layers"].items()
    }
    n, kept = int(sparsity["prunable_params"]), int(sparsity["kept_params"])
    return {
        "allocation": spec.pruning.allocation,
        "granularity": spec.pruning.granularity,
        "layers": layers,
        "total": {"n": n, "kept": kept, "rate": kept / n if n else 0.0},
    }


def inference_cost(
    spec: JobSpec,
    info: dict[str, Any],
    device: torch.device,
    out_dir: Path,
    exported: Exported,
    dense_result: dict[str, Any] | None,
    dense_fallback: Callable[[], nn.Module],
) -> dict[str, Any]:
    """``compare_to_dense`` of the variant's evaluated network against the dense network of the same
    seed (its evaluated file when it has one, else ``dense_fallback()``), with the spec's measurement
    settings."""
    from core.pipeline.measure import compare_to_dense

    network, artifacts = exported.network, exported.artifacts
    ev = spec.evaluation
    dense_artifacts = (dense_result or {}).get("artifacts", {})
    with rng_kept(device):
        fmt = "compressed" if "compressed" in dense_artifacts else None
        build = fresh_network_of(network)
        dense = load_exported(out_dir, dense_artifacts, fmt, build) if fmt else dense_fallback()
        dense_onnx = dense_artifacts.get(ONNX, {}).get("name")
        variant_onnx = artifacts.get(ONNX, {}).get("name")
        shape = tuple(info.get("input_shape") or ())
        result = compare_to_dense(
            copy.deepcopy(dense).cpu().eval(),
            copy.deepcopy(network).cpu().eval(),
            shape,
            device=device,
            dense_onnx=str(out_dir / dense_onnx) if dense_onnx else None,
            variant_onnx=str(out_dir / variant_onnx) if variant_onnx else None,
            batches=tuple(ev.measure_batch_sizes),
            repeats=ev.measure_repeats,
            warmup=ev.measure_warmup,
            threads=ev.measure_threads or torch.get_num_threads(),
            latency=ev.measure_latency,
        )
    result["dense_network"] = dense_artifacts.get("compressed", {}).get("name", "the pretrained network in memory")
    return result
