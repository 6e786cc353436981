"""Channel granularity on the user's own ONNX graphs: Torch-Pruning's dependency graph on the converted
module (residual additions, concatenations, depthwise convolutions), the smaller graph shipped as ONNX
under the user's names; what it cannot rebuild is refused at preflight naming the node."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from core.errors import CoreError
from core.models.onnx_import import import_onnx
from core.models.onnx_network import create_onnx_model
from core.pipeline.measure import count_macs
from core.pipeline.preflight import onnx_channel_refusal, preflight
from core.pipeline.runner import run_job
from core.spec import load_spec
from tests.core.models.onnx_helpers import export_onnx, onnx_job_spec

CLASSES = 3


def _resnet_style() -> nn.Module:
    """torchvision's ResNet with one BasicBlock per stage, narrowed: residual adds, strided shortcuts."""
    torch.manual_seed(0)
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    return net


def _densenet_style() -> nn.Module:
    """torchvision's DenseNet, tiny: every layer's output concatenated onto its input."""
    torch.manual_seed(0)
    return torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=CLASSES
    )


def _mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(num_classes=CLASSES, width_mult=0.25)


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


class _PerChannelConstant(nn.Module):
    """A per-channel scale kept as a constant of the graph: its width cannot follow the pruned channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)) * self.scale)).mean((2, 3)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_channels") / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), labels=np.arange(24) % CLASSES)
    return path


def _spec(onnx_path, data_path, method: str):
    pruning = {"methods": [method], "k": [0.5], "granularity": "channel"}
    return load_spec(
        onnx_job_spec(
            onnx_path, data_path, num_classes=CLASSES, objective={"type": "natural"}, pruning=pruning, batch_size=8
        )
    )


@pytest.mark.parametrize(
    ("build", "method"),
    [(_resnet_style, "hydra"), (_densenet_style, "lwm"), (_mobilenet, "lwm")],
    ids=["resnet_1111_residual", "densenet_concat", "mobilenet_v3_small_depthwise"],
)
def test_channel_pruning_of_an_onnx_graph_ships_the_smaller_graph(tmp_path, data, build, method):
    path = tmp_path / "net.onnx"
    path.write_bytes(export_onnx(build(), (3, 16, 16)))
    spec = _spec(path, data, method)
    assert preflight(spec) is None  # no longer refused: the dependency graph handles it
    out = tmp_path / "run"
    report = run_job(spec, out)
    variant = report["variants"][f"{method}_k0.5"]
    assert variant["checks"]["onnx_parity"]["details"]["ok"], variant["checks"]
    graph_path = out / variant["artifacts"]["onnx"]["name"]
    graph = onnx.load(str(graph_path), load_external_data=False)
    assert [i.name for i in graph.graph.input] == ["img"] and [o.name for o in graph.graph.output] == ["scores"]
    before = create_onnx_model(import_onnx(path.read_bytes()))
    after = create_onnx_model(import_onnx(graph_path.read_bytes()))  # the shipped graph imports like an upload
    x = torch.rand(1, 3, 16, 16)
    macs_before, macs_after = count_macs(before, x), count_macs(after, x)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert macs_after < 0.6 * macs_before and params(after) < 0.6 * params(before), (macs_before, macs_after)
    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    batch = torch.rand(5, 3, 16, 16)
    got = session.run(["scores"], {"img": batch.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - after(batch).numpy()).max() <= 1e-4
    assert json.loads((out / "spec.json").read_text())["pruning"]["granularity"] == "channel"


@pytest.mark.parametrize(
    ("build", "needle"),
    [(_Grouped, "grouped ones (net.b/Conv, groups=2)"), (_PerChannelConstant, "fails at node Mul")],
    ids=["grouped_conv", "per_channel_constant"],
)
def test_a_graph_channel_pruning_cannot_rebuild_is_refused_naming_the_node(tmp_path, data, build, needle):
    path = tmp_path / "net.onnx"
    path.write_bytes(export_onnx(build(), (3, 16, 16)))
    source = import_onnx(path.read_bytes())
    assert needle in (onnx_channel_refusal(create_onnx_model(source), source.input_shape) or "")
    with pytest.raises(CoreError) as err:
        preflight(_spec(path, data, "hydra"))
    assert (err.value.code, err.value.field) == ("channel_unsupported", "pruning.granularity")
    assert needle in err.value.message
    unstructured = _spec(path, data, "hydra").model_dump(mode="json")
    unstructured["pruning"]["granularity"] = "unstructured"
    assert preflight(load_spec(unstructured)) is None  # unstructured always works
