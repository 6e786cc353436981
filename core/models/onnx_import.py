"""The user's own network as ONNX: checked, converted to PyTorch, parity-checked, made prunable.

``import_onnx(data)`` takes the bytes of an ``.onnx`` file and returns an :class:`ImportedNetwork`
whose ``module`` is a plain PyTorch module (a ``torch.fx.GraphModule``) in which every Conv, Gemm and
MatMul with a weight initializer is an ``nn.Conv2d`` / ``nn.Linear`` — exactly the layers
``core.pruning.masked.convert_to_masked`` turns into prunable ones, as for the zoo's networks.

Nothing in the file runs as code. It is parsed with ``ModelProto.ParseFromString`` (never
``onnx.load``, which follows external-data paths), then refused unless:

* it is at most ``MAX_BYTES`` and ``MAX_NODES`` nodes, no inferred tensor over ``MAX_ELEMENTS`` per
  sample (shape bombs: ConstantOfShape, Expand, Tile), no subgraphs (If/Loop/Scan), no model-local
  functions, only the default ONNX domain (custom ops would need code we do not have);
* no tensor (initializer, sparse initializer, Constant attribute) has ``data_location = EXTERNAL``:
  the weights must be inside the file, nothing is read from a path the file names;
* ``onnx.checker`` accepts it and its default-domain opset is in ``[MIN_OPSET, MAX_OPSET]``;
* it has one float input ``(batch, *input_shape)`` with static non-batch dimensions and one output
  ``(batch, num_classes)``;
* the converted module matches onnxruntime on seeded random inputs within ``PARITY_ATOL`` (and within
  ``PARITY_RTOL`` of the largest output, so tiny outputs do not pass by their size alone).

The converter is onnx2torch (PyPI ``onnx2torch``). Compared on this project's test networks
(torchvision resnet18, mobilenet_v3_small, a small densenet; both torch exporters) with onnx2pytorch:
both match onnxruntime to ~1e-7, but onnx2torch covers more ops (~110 converters), is the widely used
one, and yields a ``torch.fx.GraphModule`` whose nodes keep the ONNX node names, so every refusal can
name the node and the graph stays inspectable (the dependency graph channel pruning needs). onnx-pytorch
generates Python source (code to execute), which is ruled out. onnx2torch's converters stop at opset
17 for some ops and refuse ``Reshape(allowzero=1)``; we therefore first fold constants with the onnx
project's own optimizer (onnxscript), down-convert newer opsets with ``onnx.version_converter``, and
clear ``allowzero`` where the target shape is a constant without zeros (where it changes nothing).
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.errors import CoreError
from core.models.onnx_rewrite import flatten_constant_reshapes

if TYPE_CHECKING:
    import onnx

FIELD = "model.onnx"
MAX_BYTES = 512 * 1024 * 1024
MAX_NODES = 20_000
MAX_ELEMENTS = 1 << 26  # per sample, any tensor the graph makes (256 MiB of float32)
MIN_OPSET, MAX_OPSET = 9, 22
CONVERT_OPSET = 17  # onnx2torch's newest converters; newer graphs are down-converted to it
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
PARITY_SAMPLES = 4
_DEFAULT_DOMAINS = ("", "ai.onnx")
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class ImportedNetwork:
    """A converted ONNX network and what was read from its graph."""

    module: nn.Module
    sha256: str
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    num_classes: int
    opset: int
    op_counts: dict[str, int]
    parameters: int
    parity_max_abs_diff: float
    prunable: dict[str, str] = field(default_factory=dict)  # module name -> ONNX op it came from

    def describe(self) -> dict[str, Any]:
        """What the report and model card say about the source graph."""
        return {
            "sha256": self.sha256,
            "input": {"name": self.input_name, "shape": list(self.input_shape)},
            "output": {"name": self.output_name, "num_classes": self.num_classes},
            "opset": self.opset,
            "op_counts": dict(sorted(self.op_counts.items())),
            "nodes": sum(self.op_counts.values()),
            "parameters": self.parameters,
            "prunable_layers": len(self.prunable),
            "conversion_parity_max_abs_diff": self.parity_max_abs_diff,
        }


def _refuse(code: str, message: str) -> CoreError:
    return CoreError(code, FIELD, message)


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name or f'#{index}'!r} (op {node.op_type}{', domain ' + node.domain if node.domain else ''})"


# ------------------------------------------------------------------ parsing and static checks
def parse_onnx(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES, max_elements: int = MAX_ELEMENTS
) -> onnx.ModelProto:
    """Parse and check ``data`` (module docstring); ``CoreError`` on ``model.onnx`` naming the problem."""
    import onnx
    from google.protobuf.message import DecodeError

    if len(data) > max_bytes:
        raise _refuse("onnx_too_large", f"the file is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise _refuse("onnx_unparsable", "the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError, RuntimeError) as err:
        raise _refuse("onnx_unparsable", f"not an ONNX model (protobuf: {err})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise _refuse("onnx_unparsable", "not an ONNX model (no graph, or a graph without nodes)")
    graph = model.graph
    if len(graph.node) > max_nodes:
        raise _refuse("onnx_too_many_nodes", f"the graph has {len(graph.node)} nodes; the limit is {max_nodes}")
    if model.functions:
        raise _refuse(
            "onnx_custom_op", f"the model defines local functions ({model.functions[0].name!r}); they are not supported"
        )
    for i, node in enumerate(graph.node):  # nodes first: a refusal names the node
        if node.domain not in _DEFAULT_DOMAINS:
            raise _refuse("onnx_custom_op", f"{_node_label(node, i)} is a custom operator; only standard ONNX ops")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise _refuse("onnx_unsupported_op", f"{_node_label(node, i)} holds a subgraph (control flow)")
    for opset in model.opset_import:
        if opset.domain not in _DEFAULT_DOMAINS:
            raise _refuse("onnx_custom_op", f"the model imports the custom operator domain {opset.domain!r}")
    _check_tensors(model)
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise _refuse("onnx_opset", f"opset {opset} is outside the supported range {MIN_OPSET}..{MAX_OPSET}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _refuse("onnx_invalid", f"onnx.checker refused the model: {first[:300]}") from None
    _check_tensor_sizes(model, max_elements)
    return model


def _check_tensor_sizes(model: onnx.ModelProto, max_elements: int) -> None:
    """Refuse a graph whose shapes, as inferred (constants propagated), make a tensor of more than
    ``max_elements`` per sample (batch-like symbolic dimensions count 1): a ConstantOfShape / Expand /
    Tile / Resize bomb would otherwise allocate it in the constant folding, onnxruntime or PyTorch."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as err:
        raise _refuse("onnx_invalid", f"shape inference failed: {str(err)[:300]}") from None
    sizes: dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
            sizes[value.name] = math.prod(dims)
    for i, node in enumerate(model.graph.node):
        for output in node.output:
            if sizes.get(output, 0) > max_elements:
                raise _refuse(
                    "onnx_too_large",
                    f"{_node_label(node, i)} makes a tensor of {sizes[output]:,} elements per sample "
                    f"(limit {max_elements:,})",
                )


def _check_tensors(model: onnx.ModelProto) -> None:
    """Every tensor's data must be inside the file (no external-data paths), names unique."""
    import onnx

    graph = model.graph
    tensors: list[tuple[str, onnx.TensorProto]] = [("initializer", t) for t in graph.initializer]
    tensors += [("sparse initializer", s.values) for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append((f"attribute {attr.name!r} of node {node.name!r}", attr.t))
            elif attr.type == onnx.AttributeProto.TENSORS:
                tensors += [(f"attribute {attr.name!r} of node {node.name!r}", t) for t in attr.tensors]
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                tensors.append((f"attribute {attr.name!r} of node {node.name!r}", attr.sparse_tensor.values))
    for where, tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise _refuse(
                "onnx_external_data",
                f"{where} {tensor.name!r} keeps its data in an external file ({location!r}); "
                "export with the weights inside the .onnx file",
            )


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


def _io_signature(model: onnx.ModelProto) -> tuple[str, tuple[int, ...], str, int | None]:
    import onnx

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise _refuse(
            "onnx_signature",
            f"the graph must have one input and one output, it has {len(inputs)} inputs and {len(graph.output)} outputs",
        )
    inp, out = inputs[0], graph.output[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type") or tt.elem_type != onnx.TensorProto.FLOAT:
        raise _refuse("onnx_signature", f"input {inp.name!r} must be a float32 tensor")
    dims = list(tt.shape.dim)
    if len(dims) < 2:
        raise _refuse("onnx_signature", f"input {inp.name!r} must be (batch, ...) with at least 2 dimensions")
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:])
    if any(s <= 0 for s in shape):
        raise _refuse("onnx_signature", f"input {inp.name!r} needs static sizes after the batch dimension")
    out_dims = list(out.type.tensor_type.shape.dim)
    if out_dims and len(out_dims) != 2:
        raise _refuse("onnx_signature", f"output {out.name!r} must be (batch, classes), it has {len(out_dims)} dims")
    classes = out_dims[1].dim_value if len(out_dims) == 2 and out_dims[1].HasField("dim_value") else None
    return inp.name, shape, out.name, classes


# ------------------------------------------------------------------ conversion
def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, bring the opset within onnx2torch's converters, clear no-op ``allowzero``."""
    import onnx
    import onnxscript.optimizer
    from onnx import numpy_helper
    from onnx.version_converter import convert_version

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    folding_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding_log.level
    folding_log.setLevel(logging.WARNING)  # it logs every op it leaves alone at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = onnxscript.optimizer.optimize(prepared)
            if default_opset(prepared) > CONVERT_OPSET:
                prepared = convert_version(prepared, CONVERT_OPSET)
    except Exception as err:  # noqa: BLE001 - the optimizer/version converter raise many types on odd graphs
        raise _refuse("onnx_unsupported_op", f"the graph could not be prepared for conversion: {err}") from None
    finally:
        folding_log.setLevel(level)
    constants = {t.name: t for t in prepared.graph.initializer}
    for node in prepared.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = numpy_helper.to_array(constants[node.input[1]])
        if (target != 0).all():
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return prepared


def _convert(model: onnx.ModelProto) -> torch.fx.GraphModule:
    from onnx2torch import convert

    for i, node in enumerate(model.graph.node):
        if node.op_type == "Conv" and node.input[1] not in {t.name for t in model.graph.initializer}:
            raise _refuse("onnx_unsupported_op", f"{_node_label(node, i)} computes its weights in the graph")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(model)
    except Exception as err:  # noqa: BLE001 - onnx2torch raises anything; the node is named below
        raise _first_unconvertible(model, err) from None


def _first_unconvertible(model: onnx.ModelProto, err: Exception) -> CoreError:
    """onnx2torch's errors do not say which node failed: convert node by node to name it."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    opset = default_opset(model)
    graph = OnnxGraph(model.graph)
    for i, onnx_node in enumerate(graph.nodes.values()):
        try:
            converter = get_converter(domain=onnx_node.domain, operation_type=onnx_node.operation_type, version=opset)
            converter(onnx_node, graph)
        except Exception as node_err:  # noqa: BLE001 - the first node whose converter fails
            node = model.graph.node[i]
            return _refuse("onnx_unsupported_op", f"{_node_label(node, i)} cannot be converted to PyTorch: {node_err}")
    return _refuse("onnx_unsupported_op", f"the graph could not be converted to PyTorch: {err}")


def _make_prunable(module: torch.fx.GraphModule, model: onnx.ModelProto) -> dict[str, str]:
    """Every Conv/Gemm/MatMul with a weight initializer as an ``nn.Conv2d``/``nn.Linear``; returns
    ``{module name: op}``. onnx2torch already maps Conv and Gemm-with-initializer (transA=0); a MatMul
    ``x @ W`` with a 2-D initializer ``W`` becomes ``nn.Linear`` holding ``W.T``. Anything else with a
    weight initializer is refused, naming the node: it would stay dense behind the user's back."""
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from onnx2torch.onnx_graph import OnnxGraph

    labels = {unique: (n.name or unique, n.operation_type) for unique, n in OnnxGraph(model.graph).nodes.items()}
    prunable: dict[str, str] = {}
    for node in list(module.graph.nodes):
        if node.op != "call_module":
            continue
        target = str(node.target)
        layer = module.get_submodule(target)
        name, op = labels.get(target, (target, type(layer).__name__))
        if type(layer) in (nn.Conv2d, nn.Linear):
            prunable[target] = op
            continue
        if op not in _WEIGHT_OPS:
            continue
        weights = [a for a in node.args[1:] if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
        if isinstance(layer, OnnxMatMul) and len(node.args) == 2 and weights == [node.args[1]]:
            weight = _attr(module, str(weights[0].target))
            if weight.dim() == 2 and weight.is_floating_point():
                linear = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
                with torch.no_grad():
                    linear.weight.copy_(weight.t())
                module.add_submodule(target, linear)
                node.args = (node.args[0],)
                prunable[target] = op
                continue
        if weights or op == "Conv":
            raise _refuse(
                "onnx_unsupported_op",
                f"node {name!r} (op {op}) has a weight the pruning cannot handle ({type(layer).__name__}; "
                "prunable are 2-D convolutions, x·W with a 2-D W, and Gemm with transA=0 and a 1-D bias)",
            )
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    _drop_unused_initializers(module)
    module.recompile()
    return prunable


def _attr(module: nn.Module, target: str) -> torch.Tensor:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _drop_unused_initializers(module: torch.fx.GraphModule) -> None:
    used = {str(n.target) for n in module.graph.nodes if n.op == "get_attr"}
    container = getattr(module, "initializers", None)
    if isinstance(container, nn.Module):
        for name, _ in list(container.named_buffers(recurse=False)):
            if f"initializers.{name}" not in used:
                delattr(container, name)
        if not list(container.buffers()):  # an empty holder would read as an unknown layer to the bound code
            delattr(module, "initializers")


# ------------------------------------------------------------------ parity and the whole import
def _free_batch(model: onnx.ModelProto) -> bytes:
    """The graph with a symbolic batch dimension on its input and output (an export often fixes it to
    its example's batch); a graph that builds the batch size into its ops still fails on another one."""
    import onnx

    free = onnx.ModelProto()
    free.CopyFrom(model)
    inits = {t.name for t in free.graph.initializer}
    for value in [v for v in free.graph.input if v.name not in inits] + list(free.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    del free.graph.value_info[:]  # inferred shapes with the old batch would contradict
    return free.SerializeToString()


@torch.no_grad()
def onnx_parity(
    data: bytes, module: nn.Module, input_name: str, output_name: str, inputs: torch.Tensor
) -> tuple[float, float]:
    """Largest absolute difference between onnxruntime (CPU) on ``data`` and ``module`` on ``inputs``,
    and the largest absolute output of onnxruntime (the scale that difference is judged against)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    want = session.run([output_name], {input_name: inputs.numpy().astype(np.float32)})[0]
    module.eval()
    got = module(inputs).detach().cpu().numpy()
    if got.shape != want.shape:
        return math.inf, float(np.abs(want).max())
    return float(np.abs(got - want).max()), float(np.abs(want).max())


def import_onnx(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES, max_elements: int = MAX_ELEMENTS
) -> ImportedNetwork:
    """Check, convert and verify an ONNX network (module docstring); ``CoreError`` on ``model.onnx``."""
    model = parse_onnx(data, max_bytes=max_bytes, max_nodes=max_nodes, max_elements=max_elements)
    input_name, input_shape, output_name, classes = _io_signature(model)
    module = _convert(_prepare(model))
    prunable = _make_prunable(module, model)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand((PARITY_SAMPLES, *input_shape), generator=generator)
    with torch.no_grad():  # before the parity check, which then covers the rewrite too
        flatten_constant_reshapes(module, inputs)
    try:  # training runs other batch sizes than an export's example: check at a batch of its own
        diff, scale = onnx_parity(_free_batch(model), module, input_name, output_name, inputs)
    except CoreError:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime or the converted module failed on a valid-looking graph
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise _refuse(
            "onnx_parity",
            f"the graph could not be run on a batch of {PARITY_SAMPLES} random inputs ({first}); "
            "export it with a dynamic batch axis",
        ) from None
    # atol alone passes anything on a graph whose outputs are tiny (randomly initialised heads): the
    # difference must also be small next to the outputs themselves
    if not (diff <= PARITY_ATOL and diff <= PARITY_RTOL * scale + 1e-6):
        raise _refuse(
            "onnx_parity",
            f"the converted network differs from onnxruntime by {diff:.3g} on random inputs (outputs up to "
            f"{scale:.3g}; allowed: {PARITY_ATOL} and {PARITY_RTOL:g} of the outputs)",
        )
    with torch.no_grad():
        out = module(inputs[:1])
    if out.dim() != 2:
        raise _refuse("onnx_signature", f"output {output_name!r} must be (batch, classes), got {tuple(out.shape)}")
    num_classes = classes or int(out.shape[1])
    return ImportedNetwork(
        module=module,
        sha256=hashlib.sha256(data).hexdigest(),
        input_name=input_name,
        output_name=output_name,
        input_shape=input_shape,
        num_classes=num_classes,
        opset=default_opset(model),
        op_counts=dict(Counter(node.op_type for node in model.graph.node)),
        parameters=sum(int(np.prod(t.dims)) for t in model.graph.initializer),
        parity_max_abs_diff=diff,
        prunable=prunable,
    )
