"""A model card beside every network a run exports: ``<variant>.model_card.md``.

Markdown after the Hugging Face model-card conventions: YAML front matter (``library_name``, ``tags``,
``datasets``, ``metrics``, a ``model-index`` with the measured results), then the sections a user needs
to trust and use the network: architecture, sparsity per layer and in total, the benign / robust /
certified numbers each with the exact procedure that measured it (sample, 95% interval), the training
spec (objective and stages), the parent network it was pruned from, the artifacts' sizes and sha256,
and how to load it. Rendered from the evaluation result alone (no torch), so it says what was measured.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from core.pipeline.measure import latency_text, speedup_text
from core.pipeline.report_model import Ratio, VariantResult
from core.pruning.methods import METHODS
from core.spec import JobSpec
from core.vocab import DENSE, card_name, dense_name

DENSE_DESCRIPTION = "the dense network (no pruning)"


def _method_description(method: str) -> str:
    return DENSE_DESCRIPTION if method == DENSE else METHODS.get(method).description


def _stages_of(method: str) -> tuple[str, ...]:
    if method == DENSE:
        return ("pretrain",)
    return ("prune", "finetune") if METHODS.get(method).trains_scores else ("finetune",)


def _kind(metric: str) -> str:
    if metric == "benign_acc":
        return "benign"
    if metric.startswith(("certified_", "verified_")):
        return "certified"
    return "robust"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _front_matter(
    variant: str,
    result: VariantResult,
    spec: JobSpec,
    info: dict[str, Any],
    shown: dict[str, Any],
    parent: VariantResult | None,
) -> str:
    method = result.method
    dataset = str(info.get("name") or spec.dataset.name)
    metrics = result.metrics
    tags = [
        "pytorch",
        "safetensors",
        "image-classification",
        "adversarial-robustness",
        f"objective-{spec.objective.type}",
    ]
    if method != DENSE:
        tags += ["pruning", "sparse", method]
    entries = [
        {"type": "accuracy", "name": name, "value": round(float(value), 6)}
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    hub_id = HUB_DATASETS.get(spec.dataset.name)
    meta: dict[str, Any] = {
        "library_name": "pytorch",
        "license": spec.export.license,
        "pipeline_tag": "image-classification",
        "tags": tags,
        **({"datasets": [hub_id]} if hub_id else {}),
        "metrics": ["accuracy"],
        **_parent_ids(result, shown, parent),
        "threat_model": threat_model(spec, result),
        "model-index": [
            {
                "name": variant,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image classification"},
                        "dataset": {"type": dataset, "name": dataset, "split": "test"},
                        "metrics": entries,
                    }
                ],
            }
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, default_flow_style=False) + "---\n"


# The Hugging Face Hub ids of the catalogue's public datasets (mnist5k is a 5,000-digit sample of MNIST);
# uploads and image folders have none, and the card names them in its text instead.
HUB_DATASETS = {
    "mnist": "ylecun/mnist",
    "mnist5k": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
    "svhn": "ufldl-stanford/svhn",
}


def _parent_ids(result: VariantResult, shown: dict[str, Any], parent: VariantResult | None) -> dict[str, Any]:
    """The parent network by what resolves it: the dense network's file and sha256 for a pruned one, the
    user's checkpoint reference for the dense one. (Hub-style ``base_model`` needs a Hub id, which a
    network of this run does not have.)"""
    if result.method != DENSE:
        arts = parent.artifacts if parent is not None else {}
        art = next((arts[f] for f in ("compressed", "dense", "channel", "onnx") if f in arts), None)
        if art is not None:
            return {"parent_network": {"file": art.name, "sha256": art.sha256}}
        return {}
    checkpoint = _checkpoint(shown)
    return {"parent_network": {"checkpoint": checkpoint}} if checkpoint else {}


def threat_model(spec: JobSpec, result: VariantResult) -> dict[str, Any]:
    """What the robust numbers hold against: the l_p ball, the attacks and the certificate that measured
    them (names from the evaluation's own procedures)."""
    from core.pipeline.evaluate import attack_settings

    ball = attack_settings(spec)
    procedures = result.procedures
    attacks = [m for m in procedures if _kind(m) == "robust"]
    certified = [m for m in procedures if _kind(m) == "certified"]
    return {
        "norm": ball["norm"],
        "eps": ball["eps"],
        "attacks": {m: " ".join(str(procedures[m]).split()) for m in attacks},
        "certificates": {m: " ".join(str(procedures[m]).split()) for m in certified},
    }


def _checkpoint(shown: dict[str, Any]) -> str | None:
    """The starting checkpoint as the user named it (an upload id, not a worker's local copy)."""
    return (shown.get("model") or {}).get("checkpoint")


def _parent_name(result: VariantResult, spec: JobSpec, shown: dict[str, Any]) -> str | None:
    if result.method != DENSE:
        return dense_name(None if spec.seeds is None else result.seed)
    return _checkpoint(shown)


def _architecture(result: VariantResult, spec: JobSpec, info: dict[str, Any]) -> list[str]:
    kwargs = {**spec.model.kwargs, "num_classes": info.get("num_classes")}
    graph = result.source_graph
    if graph:
        ops = ", ".join(f"{op} {n}" for op, n in graph["op_counts"].items())
        source = [
            f"- architecture: the user's ONNX graph, sha256 `{graph['sha256']}` (opset {graph['opset']}, "
            f"{graph['nodes']} nodes: {ops}; {graph['parameters']:,} parameters, {graph['prunable_layers']} "
            "prunable Conv/Gemm/MatMul layers), converted with onnx2torch (logits within "
            f"{graph['conversion_parity_max_abs_diff']:.2g} of onnxruntime's)",
            f"- graph input `{graph['input']['name']}`, output `{graph['output']['name']}`: the ONNX export "
            "keeps these names and the opset",
        ]
    else:
        source = [f"- architecture: `{spec.model.arch}` (from `core.models.zoo`), arguments `{json.dumps(kwargs)}`"]
    lines = [
        "## Architecture",
        "",
        *source,
        "- input: "
        + (f"{list(info['input_shape'])} " if info.get("input_shape") else "")
        + "pixels in [0, 1]; the input normalisation is part of the network",
        f"- classes: {info.get('num_classes')}",
        f"- compression: {_method_description(result.method)}"
        + (f"; keep fraction k = {result.k:g}" if isinstance(result.k, (int, float)) else ""),
    ]
    if result.method != DENSE:
        pruning = spec.pruning
        lines.append(
            f"- granularity `{pruning.granularity}`"
            + (
                " (whole channels removed: the network is physically smaller)"
                if pruning.granularity == "channel"
                else ""
            )
            + f", allocation `{pruning.allocation}`"
            + {
                "uniform": " (every layer keeps k)"
                if pruning.granularity != "channel"
                else " (every channel group keeps k)",
                "global": " (one top-k over all layers)",
                "learned": " (per-layer rates trained with the scores, projected onto the exact budget)",
            }[pruning.allocation]
        )
    return lines + [""]


def _channels(result: VariantResult) -> list[str]:
    channels = result.channels
    if not channels:
        return []
    lines = ["Output channels kept per layer (the rebuilt network's widths):", "", "| layer | channels | kept |"]
    lines.append("|---|---:|---:|")
    for layer, row in channels.items():
        lines.append(f"| `{layer}` | {row['channels']} | {row['kept']} |")
    return lines + [""]


def _fmt_entry(entry: Ratio | None, unit: str, scale: float) -> tuple[str, str, str]:
    if entry is None:
        return "–", "–", "–"

    def one(v: Any) -> str:
        if not isinstance(v, (int, float)):
            return "–"
        return f"{v * scale:,.0f}" if not unit else f"{v * scale:.4g} {unit}"

    ratio = entry.ratio
    return (
        one(entry.variant),
        one(entry.dense),
        f"{ratio:.3g}" if isinstance(ratio, (int, float)) else "–",
    )


def _inference(result: VariantResult) -> list[str]:
    inf = result.inference
    if not inf:
        return []
    lines = [
        "## Inference cost",
        "",
        f"This network next to the dense one (`{inf.dense_network or 'dense'}`), measured in the same process.",
        "",
        "| measure | this network | dense | ratio (latency: speed-up, dense / this) |",
        "|---|---:|---:|---:|",
    ]
    rows: list[tuple[str, Any, str, float]] = [
        ("parameters", inf.params, "", 1.0),
        ("nonzero parameters", inf.nonzero_params, "", 1.0),
        ("MACs (layer shapes)", inf.macs, "", 1.0),
        ("MACs of nonzero weights", inf.sparse_macs, "", 1.0),
    ]
    peak = inf.peak_memory
    if peak is not None:
        rows.append((f"peak inference memory, batch {peak.batch}", peak, "MiB", 1 / 2**20))
    for label, entry, unit, scale in rows:
        mine, dense, ratio = _fmt_entry(entry, unit, scale)
        lines.append(f"| {label} | {mine} | {dense} | {ratio} |")
    # latency: times with their spread, and only the speed-up (dense / this network), never a ratio
    for key, entry in inf.latency.items():
        lines.append(
            f"| latency {key} | {latency_text(entry.model_dump())} | {latency_text(entry.model_dump(), 'dense')} | {speedup_text(entry.model_dump())} |"
        )
    lines.append("")
    lines += [f"- {what}: {how}" for what, how in inf.method.items()]
    return lines + [""]


def _sparsity(result: VariantResult) -> list[str]:
    sp = result.sparsity
    lines = ["## Sparsity", ""]
    if not sp:
        k = result.k
        target = f" (target: {_pct(1 - k)} from k = {k:g})" if isinstance(k, (int, float)) else ""
        return lines + [f"Not measured: no compressed artifact was exported{target}.", ""]
    lines += [
        f"Total: **{_pct(sp.total)}** of the {sp.prunable_params:,} prunable (conv/linear) "
        f"weights are zero; {sp.kept_params:,} kept. Counted from the tensors stored in the "
        + (
            "channel-pruned artifact (removed channels count as zeros of the full-width layers)"
            if "channel" in result.artifacts
            else "compressed artifact"
        )
        + ", not from the spec.",
        "",
        "| layer | weights | nonzero | sparsity |",
        "|---|---:|---:|---:|",
    ]
    for layer, row in sp.layers.items():
        lines.append(f"| `{layer}` | {row.n:,} | {row.nnz:,} | {_pct(row.sparsity)} |")
    return lines + [""] + _channels(result)


def _evaluation(result: VariantResult) -> list[str]:
    metrics = result.metrics
    procedures = result.procedures
    intervals = result.intervals
    counts = result.counts
    lines = ["## Evaluation", ""]
    if result.evaluated:
        lines += [f"Measured on {result.evaluated}.", ""]
    for kind, title in (
        ("benign", "Benign"),
        ("robust", "Robust (empirical, under attack)"),
        ("certified", "Certified"),
    ):
        names = [m for m in metrics if _kind(m) == kind]
        if not names:
            continue
        lines += [
            f"### {title}",
            "",
            "| metric | value | 95% interval | correct / n | procedure |",
            "|---|---:|---|---:|---|",
        ]
        for m in names:
            ci = intervals.get(m)
            ci_text = f"[{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "–"
            count = counts.get(m)
            count_text = f"{count[0]} / {count[1]}" if count else "–"
            value = metrics[m]
            value_text = _pct(value) if "acc" in m else f"{value:.4g}"
            proc = " ".join(str(procedures.get(m, "–")).split()).replace("|", "\\|")
            lines.append(f"| `{m}` | {value_text} | {ci_text} | {count_text} | {proc} |")
        lines.append("")
    if result.interval_method:
        lines += [f"Intervals: {result.interval_method}.", ""]
    samples = result.samples
    if samples:
        lines += ["Samples:", ""]
        for name, s in samples.items():
            lines.append(f"- `{name}`: {s.n} of {s.of} test samples, {s.how}; per class {json.dumps(s.per_class)}")
        lines.append("")
    if result.checks:
        lines += ["Checks:", ""]
        for name, check in result.checks.items():
            verdict = "**FLAGGED**" if check.flagged else "ok"
            lines.append(f"- `{name}` {verdict}: {check.message} (rule: {check.rule})")
        lines.append("")
    lines += _timings(result)
    return lines


def _timings(result: VariantResult) -> list[str]:
    t = result.timings
    if not t.stages and not t.attacks:
        return []
    parts = [f"{stage} {sec:.1f} s" for stage, sec in t.stages.items()]
    parts += [f"attack {name} {sec:.1f} s" for name, sec in t.attacks.items()]
    return ["Wall time: " + ", ".join(parts) + ".", ""]


def _training(result: VariantResult, spec: JobSpec, shown: dict[str, Any]) -> list[str]:
    method = result.method
    lines = [
        "## Training",
        "",
        f"Seed {result.seed if result.seed is not None else spec.seed}; dataset `{spec.dataset.name}` "
        f"(batch size {spec.dataset.batch_size}"
        + (f", at most {spec.dataset.max_train_samples} training samples" if spec.dataset.max_train_samples else "")
        + ").",
        "",
        "| stage | epochs | lr | optimizer | schedule | objective |",
        "|---|---:|---:|---|---|---|",
    ]
    stages = list(_stages_of(method))
    if method != DENSE and spec.stages.pretrain is not None:
        stages = ["pretrain (the parent)", *stages]
    for label in stages:
        name = label.split(" ")[0]
        stage = getattr(spec.stages, name, None)
        if stage is None or stage.epochs == 0:
            continue
        objective = spec.objective_for(name).model_dump(mode="json")
        lines.append(
            f"| {label} | {stage.epochs} | {stage.lr:g} | {stage.optimizer} | {stage.schedule} | "
            f"`{json.dumps(objective)}` |"
        )
    lines += [
        "",
        "<details><summary>The whole job spec</summary>",
        "",
        "```json",
        json.dumps(shown, indent=2, default=str),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def _parent(result: VariantResult, spec: JobSpec, shown: dict[str, Any], parent: VariantResult | None) -> list[str]:
    lines = ["## Parent network", ""]
    checkpoint = _checkpoint(shown)
    start = (
        f"the uploaded/pretrained checkpoint `{checkpoint}` ({spec.model.checkpoint_format})"
        if checkpoint
        else "a fresh random initialisation"
    )
    if result.method == DENSE:
        how = (
            "then pretrained with the stage above"
            if spec.stages.pretrain and spec.stages.pretrain.epochs
            else "used as is (no pretraining stage)"
        )
        return lines + [f"None: this is the dense network. It starts from {start}, {how}.", ""]
    name = _parent_name(result, spec, shown)
    lines.append(f"Pruned from the dense network `{name}` of this run (itself from {start}).")
    for fmt, art in (parent.artifacts if parent is not None else {}).items():
        if fmt != "model_card":
            lines.append(f"- `{art.name}`: {art.size:,} bytes, sha256 `{art.sha256}`")
    return lines + [""]


def _artifacts(result: VariantResult) -> list[str]:
    lines = ["## Files", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    for fmt, art in result.artifacts.items():
        if fmt != "model_card":  # this card cannot name its own digest
            lines.append(f"| `{art.name}` | {art.size:,} | `{art.sha256}` |")
    return lines + ["", "Check a download with `sha256sum <file>`.", ""]


def _usage(result: VariantResult, spec: JobSpec, info: dict[str, Any]) -> list[str]:
    arts = result.artifacts
    kwargs = {**spec.model.kwargs, "num_classes": info.get("num_classes")}
    lines = ["## How to load it", ""]
    if "compressed" in arts:
        imports, rebuild = ["from core import load_compressed_model"], ""
        if result.source_graph:  # the user's graph, not a catalogue name, gives the layers
            imports.append("from core.models.onnx_network import create_onnx_model, load_onnx")
            rebuild = ', build=lambda: create_onnx_model(load_onnx("your_network.onnx"))'
        lines += [
            "The compressed artifact (sparse, with the architecture in its metadata):",
            "",
            "```python",
            *imports,
            "",
            f'model = load_compressed_model("{arts["compressed"].name}"{rebuild}).eval()',
            "logits = model(x)  # x: float tensor of [0, 1] pixels, shape (N, *input_shape)",
            "```",
            "",
        ]
    if "dense" in arts and result.source_graph:  # no catalogue name rebuilds the user's graph
        lines += [
            "The dense safetensors (effective weights, no pruning state) load with `load_state_dict` into "
            "the source graph converted by `core.models.onnx_network.load_onnx` (the ONNX file below needs "
            "nothing of this project).",
            "",
        ]
    elif "dense" in arts:  # the dense export format
        lines += [
            "The dense safetensors (effective weights, no pruning state) into the plain architecture:",
            "",
            "```python",
            "from safetensors.torch import load_file",
            "from core import create_model",
            "",
            f'model = create_model("{spec.model.arch}", **{json.dumps(kwargs)})',
            f'model.net.load_state_dict(load_file("{arts["dense"].name}"))  # strict',
            "model.eval()",
            "```",
            "",
        ]
    lines += _plain_definition(result)
    if "channel" in arts:
        lines += [
            "The channel-pruned network (physically smaller plain layers, its widths in the header):",
            "",
            "```python",
            "from core.io.export_channel import load_channel_pruned",
            "",
            f'model = load_channel_pruned("{arts["channel"].name}")  # eval mode',
            "```",
            "",
        ]
    graph = result.source_graph
    if "onnx" in arts and graph:
        in_name, out_name = graph["input"]["name"], graph["output"]["name"]
        lines += [
            f"The ONNX graph (your input `{in_name}` and output `{out_name}`, opset {graph['opset']}, "
            "dynamic batch), with no project code:",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            "",
            f'session = ort.InferenceSession("{arts["onnx"].name}", providers=["CPUExecutionProvider"])',
            f'outputs = session.run(["{out_name}"], {{"{in_name}": inputs.astype(np.float32)}})[0]',
            "```",
            "",
        ]
    elif "onnx" in arts:
        lines += [
            "The ONNX graph (input normalisation inside; input `input`, pixels in [0, 1], dynamic batch; "
            "output `logits`), with no project code:",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            "",
            f'session = ort.InferenceSession("{arts["onnx"].name}", providers=["CPUExecutionProvider"])',
            'logits = session.run(["logits"], {"input": images.astype(np.float32)})[0]',
            "```",
            "",
        ]
    if not arts:
        lines += ["No network file was exported for this variant.", ""]
    return lines


def _plain_definition(result: VariantResult) -> list[str]:
    """The network written out in plain ``torch.nn`` (checked when it was exported), so loading needs
    neither this project nor a guess at strides and paddings."""
    plain = result.plain_definition
    if not plain:
        return [
            "Without this project: this architecture is not a plain `nn.Sequential`, so its definition is "
            "not printed here; the ONNX graph (when exported) runs with onnxruntime alone.",
            "",
        ]
    prefix = plain.prefix
    if not plain.loads:
        load = "# no plain safetensors file was exported for this network"
    elif prefix:
        load = (
            f'tensors = load_file("{plain.loads}")\n'
            f"net.load_state_dict({{k.removeprefix({prefix!r}): v for k, v in tensors.items() if k.startswith({prefix!r})}})"
        )
    else:
        load = f'net.load_state_dict(load_file("{plain.loads}"))  # strict: every tensor matches'

    pre = f"normalize = Normalize({plain.mean}, {plain.std})" if plain.mean is not None else "normalize = nn.Identity()"
    return [
        "Without this project (only `torch` and `safetensors`): the network in plain `torch.nn`, checked "
        "at export to load this file strictly and give the same logits:",
        "",
        "```python",
        plain.code.rstrip(),
        "",
        "from safetensors.torch import load_file",
        "",
        load,
        pre,
        "net.eval()",
        "logits = net(normalize(x))  # x: float tensor of [0, 1] pixels, shape (N, C, H, W)",
        "```",
        "",
    ]


LIMITATIONS = (
    "Empirical robust accuracy is an upper bound on the true robust accuracy: it counts the examples the "
    "attacks above failed to break, and a stronger or adaptive attack may break more. Certified numbers "
    "are lower bounds that hold only for the stated certificate, norm and radius.",
    "Every number holds for the stated threat model only: other norms, larger perturbations, natural "
    "corruptions and distribution shift were not measured.",
    "Numbers come from the stated test sample (size and 95% interval above); a different sample gives "
    "numbers within that interval, not the same digits.",
    "Sparse (unstructured) networks are not faster in dense kernels; the inference-cost table says what was measured.",
)


def _use_and_limits(result: VariantResult, spec: JobSpec, info: dict[str, Any]) -> list[str]:
    tm = threat_model(spec, result)
    attacks = ", ".join(f"`{m}`" for m in tm["attacks"]) or "none"
    certificates = ", ".join(f"`{m}`" for m in tm["certificates"]) or "none"
    return [
        "## Intended use and limitations",
        "",
        f"Intended use: classifying {info.get('input_shape') and list(info['input_shape'])} images like those of "
        f"`{info.get('name') or spec.dataset.name}` where a small network must keep its accuracy under "
        "bounded adversarial perturbations; research on robust compression. Not validated for other data, "
        "and not a safety case on its own.",
        "",
        f"Threat model: l_{tm['norm'].removeprefix('l')} perturbations of at most eps = {tm['eps']:g} in pixel space "
        f"[0, 1]; attacks {attacks}; certificates {certificates} (procedures in *Evaluation*).",
        "",
        *[f"- {line}" for line in LIMITATIONS],
        "",
    ]


CITATION = """@inproceedings{sehwag2020hydra,
  title     = {{HYDRA}: Pruning Adversarially Robust Neural Networks},
  author    = {Sehwag, Vikash and Wang, Shiqi and Mittal, Prateek and Jana, Suman},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume    = {33},
  year      = {2020}
}

@software{hydra_compress,
  title   = {hydra-compress: a service that compresses neural networks without giving up their robustness},
  license = {Apache-2.0},
  year    = {2026}
}"""


def _licence_and_citation(spec: JobSpec) -> list[str]:
    licence = spec.export.license
    said = (
        "not stated by the submitter (`export.license` in the job spec; the default `other` means: ask "
        "whoever submitted the job)"
        if licence == "other"
        else f"`{licence}`, as the submitter stated in `export.license`"
    )
    return [
        "## Licence",
        "",
        f"Licence of this network: {said}. The code that produced it is Apache-2.0.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]


def render_model_card(
    variant: str,
    result: VariantResult,
    spec: JobSpec,
    info: dict[str, Any],
    parent: VariantResult | None = None,
    record: dict[str, Any] | None = None,
) -> str:
    """The card of network ``variant`` from its evaluation ``result`` (``metrics``, ``procedures``,
    ``intervals``, ``samples``, ``checks``, ``sparsity``, ``artifacts``), the job ``spec`` and the dataset
    ``info``; ``parent``: the dense network's result (its artifacts are named) for a pruned variant;
    ``record``: the spec as the user wrote it (``spec.json``; default: ``spec``), shown in the card."""
    shown = record if record is not None else spec.model_dump(mode="json")
    method = result.method
    title = f"# {variant}"
    summary = (
        f"A {'dense' if method == 'dense' else 'pruned'} `{spec.model.arch}` classifier for "
        f"`{info.get('name') or spec.dataset.name}`, trained with the `{spec.objective.type}` objective"
        + ("" if method == DENSE else f" and compressed with {method.upper()}")
        + (f" (job `{spec.name}`)" if spec.name else "")
        + "."
    )
    sp = result.sparsity
    metrics = result.metrics
    headline = [f"sparsity {_pct(sp.total)}"] if sp else []
    headline += [f"{m} {_pct(v)}" for m, v in metrics.items() if m in ("benign_acc", "robust_acc", "pgd_acc")]
    parts = [_front_matter(variant, result, spec, info, shown, parent), title, "", summary, ""]
    if headline:
        parts += ["Headline: " + ", ".join(headline) + ".", ""]
    flagged = [f"- **{name.replace('_', ' ')}**: {c.message}." for name, c in result.checks.items() if c.flagged]
    if flagged:
        parts += ["**Checks flagged** (read these before trusting the numbers):", "", *flagged, ""]
    body = (
        _architecture(result, spec, info)
        + _sparsity(result)
        + _evaluation(result)
        + _inference(result)
        + _training(result, spec, shown)
        + _parent(result, spec, shown, parent)
        + _artifacts(result)
        + _usage(result, spec, info)
        + _use_and_limits(result, spec, info)
        + _licence_and_citation(spec)
    )
    return "\n".join(parts + body).rstrip() + "\n"


__all__ = ["render_model_card", "card_name"]
