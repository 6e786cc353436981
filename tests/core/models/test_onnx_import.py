"""The user's own network as ONNX: torchvision networks exported here, a graph built with the onnx helper
API, a hostile corpus, and tiny unstructured runs whose downloaded ONNX runs in onnxruntime."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from core.cli import app
from core.errors import CoreError
from core.io.export import load_compressed_model
from core.models.onnx_import import import_onnx
from core.models.onnx_network import create_onnx_model, load_onnx
from core.pipeline.preflight import preflight
from core.pipeline.runner import run_job
from core.pruning.masked import convert_to_masked, masked_layers
from core.spec import load_spec
from tests.core.models.onnx_helpers import export_onnx, onnx_job_spec

CLASSES = 3


# ------------------------------------------------------------------ networks and data
def _mobilenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(num_classes=CLASSES, width_mult=0.25)


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=CLASSES)


def _resnet_small() -> torch.nn.Module:
    """resnet18's blocks (residual additions, strided 1x1 shortcuts, max-pool), one per stage."""
    torch.manual_seed(0)
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)


def _helper_graph(*, matmul_weight_first: bool = False, custom_domain: str = "") -> onnx.ModelProto:
    """A graph no PyTorch code wrote: Conv → Relu → Flatten → Gemm → Relu → MatMul(·W) + b, on 1x8x8."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 4 * 6 * 6)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "fc_b"),
        numpy_helper.from_array(rng.normal(0, 0.3, (16, CLASSES)).astype(np.float32), "head_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (CLASSES,)).astype(np.float32), "head_b"),
    ]
    matmul = ["head_w", "h2"] if matmul_weight_first else ["h2", "head_w"]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="stem_conv", domain=custom_domain),
        helper.make_node("Relu", ["c"], ["r"], name="stem_relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["h2"], name="fc_relu"),
        helper.make_node("MatMul", matmul, ["m"], name="head"),
        helper.make_node("Add", ["m", "head_b"], ["y"], name="head_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", CLASSES])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(custom_domain, 1)] if custom_domain else [])
    return helper.make_model(graph, opset_imports=opsets, producer_name="onnx.helper")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_data")
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape, classes in (
        ("rgb", (40, 32, 32, 3), CLASSES),
        ("grey", (40, 8, 8), CLASSES),
        ("rgb5", (40, 32, 32, 3), 5),
    ):
        path = folder / f"{name}.npz"
        labels = np.arange(shape[0]) % classes
        np.savez(path, images=rng.integers(0, 256, shape, dtype=np.uint8), labels=labels)
        paths[name] = path
    return paths


def _spec(onnx_path, data_path, objective=None, **patch):
    objective = objective or {"type": "pgd", "eps": 0.03, "step_size": 0.01, "steps": 1}
    pruning = patch.pop("pruning", {"methods": ["hydra"], "k": [0.2]})
    return load_spec(
        onnx_job_spec(onnx_path, data_path, num_classes=CLASSES, objective=objective, pruning=pruning, **patch)
    )


# ------------------------------------------------------------------ conversion
@pytest.mark.parametrize(
    ("build", "dynamo"),
    [(_resnet18, False), (_mobilenet, False)],
    ids=["resnet18", "mobilenet_v3_small"],
)
def test_torchvision_networks_convert_within_atol_and_every_weight_layer_becomes_prunable(build, dynamo):
    net = build().eval()
    data = export_onnx(net, dynamo=dynamo, opset=18 if dynamo else 17)
    imported = import_onnx(data)
    graph = onnx.load_from_string(data)
    weight_nodes = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in graph.graph.node)
    assert imported.parity_max_abs_diff <= 1e-4
    assert (imported.input_name, imported.output_name, imported.input_shape) == ("img", "scores", (3, 32, 32))
    assert imported.num_classes == CLASSES and imported.op_counts["Conv"] == sum(
        isinstance(m, torch.nn.Conv2d) for m in net.modules()
    )
    model = convert_to_masked(create_onnx_model(imported))
    assert len(masked_layers(model)) == weight_nodes == len(imported.prunable)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
        assert torch.allclose(model.eval()(x), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))  # unchanged


def _opset18_graph() -> onnx.ModelProto:
    """What torch's dynamo exporter writes at opset 18: ReduceMean with its axes as an input and
    Reshape(allowzero=1) (onnx2torch converts neither as such: down-converted / cleared first)."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 6], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 0.3, (CLASSES, 6)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c", "axes"], ["p"], name="pool", keepdims=1),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat", allowzero=1),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamo_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_an_opset_18_graph_as_torch_dynamo_writes_it_converts():
    imported = import_onnx(_opset18_graph().SerializeToString())
    assert imported.opset == 18 and imported.parity_max_abs_diff <= 1e-5
    assert sorted(imported.prunable.values()) == ["Conv", "Gemm"]


def test_a_helper_api_graph_maps_gemm_and_matmul_to_prunable_linear_layers():
    imported = import_onnx(_helper_graph().SerializeToString())
    model = convert_to_masked(create_onnx_model(imported))
    kinds = sorted(type(layer).__name__ for _, layer in masked_layers(model))
    assert kinds == ["MaskedConv2d", "MaskedLinear", "MaskedLinear"]
    assert sorted(imported.prunable.values()) == ["Conv", "Gemm", "MatMul"]
    assert imported.input_shape == (1, 8, 8) and imported.num_classes == CLASSES
    session = ort.InferenceSession(_helper_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        got = model.eval()(x).numpy()
    assert np.abs(got - session.run(["y"], {"x": x.numpy()})[0]).max() < 1e-5


# ------------------------------------------------------------------ hostile corpus
def _nested_bomb(depth: int) -> bytes:
    """ModelProto.graph → node → attribute.g → node → ... nested ``depth`` times (a protobuf depth bomb)."""

    def field(number: int, payload: bytes) -> bytes:
        length, out = len(payload), b""
        while True:
            byte = length & 0x7F
            length >>= 7
            out += bytes([byte | (0x80 if length else 0)])
            if not length:
                break
        return bytes([(number << 3) | 2]) + out + payload

    graph = b""
    for _ in range(depth):
        graph = field(1, field(5, field(6, graph)))  # GraphProto.node / NodeProto.attribute / AttributeProto.g
    return field(7, graph)


def _external_data() -> bytes:
    model = _helper_graph()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    return model.SerializeToString()


def _unsupported_op() -> bytes:
    model = _helper_graph()
    model.graph.node.insert(2, helper.make_node("Hardmax", ["r"], ["rh"], name="odd_hardmax", axis=1))
    model.graph.node[3].input[0] = "rh"
    return model.SerializeToString()


def _subgraph() -> bytes:
    model = _helper_graph()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["o"])],
        "b",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], name="branchy", then_branch=branch, else_branch=branch)
    )
    return model.SerializeToString()


def _conv1d() -> bytes:
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 2, 3)).astype(np.float32), "w1d"),
        numpy_helper.from_array(rng.normal(0, 0.5, (CLASSES, 56)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1d"], ["c"], name="temporal_conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


HOSTILE = {
    "a layer the pruning cannot mask": (_conv1d(), "onnx_unsupported_op", "'temporal_conv' (op Conv)"),
    "garbage": (b"\x08\x96\x01" + bytes(range(256)) * 4, "onnx_unparsable", "not an ONNX model"),
    "empty": (b"", "onnx_unparsable", "empty"),
    "depth bomb": (_nested_bomb(400), "onnx_unparsable", "not an ONNX model"),
    "external data path": (_external_data(), "onnx_external_data", "'conv_w'"),
    "custom domain op": (
        _helper_graph(custom_domain="evil.ops").SerializeToString(),
        "onnx_custom_op",
        "'stem_conv' (op Conv, domain evil.ops)",
    ),
    "op the converter lacks": (_unsupported_op(), "onnx_unsupported_op", "'odd_hardmax' (op Hardmax)"),
    "weight-first MatMul": (
        _helper_graph(matmul_weight_first=True).SerializeToString(),
        "onnx_invalid",  # shapes (16,3)·(n,16) do not multiply: the checker's shape inference says so
        "onnx.checker",
    ),
    "control flow": (_subgraph(), "onnx_unsupported_op", "'branchy' (op If)"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_refused_naming_the_problem(case):
    data, code, needle = HOSTILE[case]
    with pytest.raises(CoreError) as err:
        import_onnx(data)
    assert (err.value.code, err.value.field) == (code, "model.onnx")
    assert needle in err.value.message


def test_a_shape_bomb_is_refused_before_anything_allocates_it():
    model = _helper_graph()
    shape = numpy_helper.from_array(np.array([4096, 4096], dtype=np.int64), "bomb_shape")
    model.graph.initializer.append(shape)
    model.graph.node.append(helper.make_node("ConstantOfShape", ["bomb_shape"], ["big"], name="bomb"))
    model.graph.node.append(helper.make_node("ReduceSum", ["big"], ["total"], name="sum", keepdims=0))
    model.graph.node.append(helper.make_node("Add", ["y_pre", "total"], ["y"], name="use_it"))
    model.graph.node[6].output[0] = "y_pre"  # head_bias now feeds use_it
    with pytest.raises(CoreError, match="'bomb' \\(op ConstantOfShape\\) makes a tensor of 16,777,216") as err:
        import_onnx(model.SerializeToString(), max_elements=1_000_000)
    assert err.value.code == "onnx_too_large"


def test_size_and_node_limits_refuse_before_parsing_everything():
    data = _helper_graph().SerializeToString()
    with pytest.raises(CoreError, match="limit is 100") as err:
        import_onnx(data, max_bytes=100)
    assert err.value.code == "onnx_too_large"
    with pytest.raises(CoreError, match="7 nodes; the limit is 3") as err:
        import_onnx(data, max_nodes=3)
    assert err.value.code == "onnx_too_many_nodes"


# ------------------------------------------------------------------ spec and preflight
def test_the_spec_reads_onnx_as_the_model_and_skips_pretraining_by_default(tmp_path, data):
    spec = _spec(tmp_path / "net.onnx", data["rgb"])
    assert spec.model.arch == "onnx" and spec.stages.pretrain is None
    assert load_spec(spec.model_dump(mode="json")).stages.pretrain is None  # stable through spec.json
    kept = load_spec({"model": {"onnx": "n.onnx"}, "stages": {"pretrain": {"epochs": 1, "lr": 0.1}}})
    assert kept.stages.pretrain is not None and kept.stages.pretrain.epochs == 1
    for bad, field in (
        ({"model": {"onnx": "n.onnx", "arch": "resnet18"}}, "model.arch"),
        ({"model": {"onnx": "n.onnx", "checkpoint": "w.safetensors"}}, "model.checkpoint"),
        ({"model": {"onnx": "n.onnx", "kwargs": {"num_classes": 7}}}, "model.kwargs"),
    ):
        with pytest.raises(CoreError) as err:
            load_spec(bad)
        assert err.value.field == field


def test_a_graph_that_does_not_fit_the_data_is_refused_at_preflight(tmp_path, data):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(_helper_graph().SerializeToString())
    assert preflight(_spec(path, data["grey"])) is None
    with pytest.raises(CoreError, match="takes inputs 1x8x8 but the data set has 3x32x32") as err:
        preflight(_spec(path, data["rgb"]))
    assert err.value.field == "model.onnx"
    five = _spec(path, data["grey"], dataset={"name": "npz", "path": str(data["grey"]), "num_classes": 5})
    with pytest.raises(CoreError, match="gives 3 outputs but the data set has 5 classes") as err:
        preflight(five)
    assert err.value.field == "model.onnx"
    channel = _spec(path, data["grey"], pruning={"methods": ["lwm"], "k": [0.5], "granularity": "channel"})
    assert preflight(channel) is None  # Torch-Pruning's groups take it (tests/core/models/test_onnx_channels.py)


def test_a_bound_objective_is_refused_naming_the_first_layer_it_cannot_bound(tmp_path, data):
    path = tmp_path / "mobilenet.onnx"
    path.write_bytes(export_onnx(_mobilenet()))
    with pytest.raises(CoreError, match="bound-based objective") as err:
        preflight(_spec(path, data["rgb"], objective={"type": "crown_ibp", "eps": 0.01}))
    assert err.value.code == "unsupported_layer" and err.value.field == "model.onnx"


# ------------------------------------------------------------------ end to end
def _check_run(out, report, *, input_name, output_name, input_shape, k, method="hydra"):
    assert report["source_graph"]["sha256"] and report["source_graph"]["op_counts"]
    variant = report["variants"][f"{method}_k{k:g}"]
    parity = variant["checks"]["onnx_parity"]["details"]
    assert parity["ok"] and parity["max_abs_diff"] <= 1e-4, parity
    assert variant["sparsity"]["kept_params"] <= 0.22 * variant["sparsity"]["prunable_params"]
    # the download runs with onnxruntime under the user's names and gives the compressed network's logits
    path = out / variant["artifacts"]["onnx"]["name"]
    graph = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in graph.graph.input] == [input_name]
    assert [o.name for o in graph.graph.output] == [output_name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, *input_shape)
    got = session.run([output_name], {input_name: x.numpy()})[0]
    source = load_onnx(json.loads((out / "spec.json").read_text())["model"]["onnx"])
    reloaded = load_compressed_model(
        out / variant["artifacts"]["compressed"]["name"], build=lambda: create_onnx_model(source)
    )
    with torch.no_grad():
        assert np.abs(got - reloaded(x).numpy()).max() <= 1e-4
    card = (out / f"{method}_k{k:g}.model_card.md").read_text()
    assert report["source_graph"]["sha256"] in card and output_name in card
    weights = [
        numpy_helper.to_array(t) for t in graph.graph.initializer if t.name.endswith("weight") or len(t.dims) == 4
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.5  # the pruned weights are zero in the shipped graph


@pytest.mark.parametrize(
    ("build", "method"), [(_mobilenet, "hydra"), (_resnet_small, "lwm")], ids=["mobilenet_v3_small", "resnet_1111"]
)
def test_an_exported_torchvision_network_prunes_end_to_end_and_ships_as_onnx(tmp_path, data, build, method):
    path = tmp_path / "net.onnx"
    path.write_bytes(export_onnx(build()))
    out = tmp_path / "run"
    small = {"name": "npz", "path": str(data["rgb"]), "num_classes": CLASSES, "batch_size": 16, "max_train_samples": 16}
    # lwm: the largest magnitudes of the user's own weights, finetuned with the natural objective
    stages = {"prune": {"epochs": 1, "lr": 0.1}, "finetune": {"epochs": 1, "lr": 0.01}}
    objective = {"type": "natural"} if method == "lwm" else None
    spec = _spec(path, data["rgb"], objective, dataset=small, stages=stages, pruning={"methods": [method], "k": [0.2]})
    report = run_job(spec, out)
    _check_run(out, report, input_name="img", output_name="scores", input_shape=(3, 32, 32), k=0.2, method=method)
    assert json.loads((out / "spec.json").read_text())["stages"]["pretrain"] is None  # the graph's weights


def test_the_cli_runs_a_helper_graph_with_trades_from_a_local_path(tmp_path, data):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(_helper_graph().SerializeToString())
    spec = _spec(path, data["grey"], objective={"type": "trades", "eps": 0.03, "step_size": 0.01, "steps": 1})
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["run", str(spec_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    _check_run(tmp_path / "run", report, input_name="x", output_name="y", input_shape=(1, 8, 8), k=0.2)
    changed = _helper_graph()
    changed.graph.initializer[0].raw_data = np.ones((4, 1, 3, 3), np.float32).tobytes()
    path.write_bytes(changed.SerializeToString())  # another network under the same name
    resumed = CliRunner().invoke(app, ["run", str(spec_path), "--out", str(tmp_path / "run"), "--resume"])
    assert resumed.exit_code != 0 and "not the one the checkpoint was trained from" in resumed.output
