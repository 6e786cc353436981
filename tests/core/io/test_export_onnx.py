"""Deployment artifacts: the channel-pruned safetensors file loads back in one call to the same network,
and every variant's ONNX file gives PyTorch's logits through onnxruntime, with no project code."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from core.errors import CoreError
from core.io.export_channel import export_channel_pruned, load_channel_pruned, read_channel_pruned
from core.io.export_onnx import check_onnx_parity, export_onnx, onnx_metadata
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, init_scores, set_keep_fraction
from core.pruning.structured import ChannelPruning, rebuild_pruned


def channel_variant(arch: str, k: float, shape: tuple[int, ...]):
    torch.manual_seed(0)
    model = convert_to_masked(create_model(arch, num_classes=10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    x = torch.rand(2, *shape)
    cp = ChannelPruning(model, x)
    cp.init_scores(model, "kaiming_normal")
    cp.set_keep(k)
    cp.refresh(model)
    cp.finalize(model)
    small, widths = rebuild_pruned(model, x)
    return model, small.eval(), widths


@pytest.fixture(scope="module")
def resnet_variant():
    return channel_variant("resnet18", 0.25, (3, 32, 32))


def test_channel_artifact_loads_back_in_one_call(tmp_path, resnet_variant):
    model, small, widths = resnet_variant
    path = tmp_path / "hydra_k0.25.channel.safetensors"
    meta = {"arch": "resnet18", "kwargs": {"num_classes": 10}, "variant": "hydra_k0.25", "k": 0.25}
    info = export_channel_pruned(small, widths, path, meta, [3, 32, 32])
    again = export_channel_pruned(small, widths, tmp_path / "again.safetensors", meta, [3, 32, 32])
    assert info["sha256"] == again["sha256"] and info["size"] == path.stat().st_size
    dense_bytes = sum(
        v.numel() * 4 for k, v in model.state_dict().items() if k.endswith("weight") and "scores" not in k
    )
    assert info["size"] < dense_bytes / 4  # really smaller: ~1/16 of the conv weights at 25% channels
    loaded = load_channel_pruned(path)
    assert not loaded.training
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in loaded.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    _, metadata, stored_widths, shape = read_channel_pruned(path)
    assert stored_widths == widths and shape == [3, 32, 32] and metadata["variant"] == "hydra_k0.25"


def test_channel_loader_refuses_other_files(tmp_path, resnet_variant):
    _, small, widths = resnet_variant
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CoreError) as err:
        load_channel_pruned(bad)
    assert err.value.code == "invalid_checkpoint"
    path = tmp_path / "wrong.safetensors"
    wrong = dict(widths)
    wrong["net.conv1"] = wrong["net.conv1"] + 1  # does not fit the stored tensors
    export_channel_pruned(small, wrong, path, {"arch": "resnet18", "kwargs": {"num_classes": 10}}, [3, 32, 32])
    with pytest.raises(CoreError):
        load_channel_pruned(path)


def test_onnx_of_the_channel_variant_matches_pytorch(tmp_path, resnet_variant):
    _, small, _ = resnet_variant
    path = tmp_path / "hydra_k0.25.onnx"
    info = export_onnx(small, path, torch.rand(1, 3, 32, 32), metadata={"variant": "hydra_k0.25", "k": 0.25})
    assert info["size"] == path.stat().st_size
    for batch in (1, 5):  # the batch dimension is dynamic
        diff = check_onnx_parity(path, small, torch.rand(batch, 3, 32, 32))
        assert diff <= 1e-4
    assert onnx_metadata(path)["variant"] == "hydra_k0.25"


@pytest.mark.parametrize("k", [1.0, 0.1])
def test_onnx_of_dense_and_unstructured_variants_matches_pytorch(tmp_path, k):
    torch.manual_seed(1)
    model = convert_to_masked(create_model("cnn_small_mnist")).eval()
    init_scores(model, "scaled")
    set_keep_fraction(model, k)
    path = tmp_path / "v.onnx"
    export_onnx(model, path, torch.rand(1, 1, 28, 28))
    assert check_onnx_parity(path, model, torch.rand(7, 1, 28, 28)) <= 1e-4
    # and it runs in a fresh interpreter that imports onnxruntime and numpy only
    code = (
        "import numpy as np, onnxruntime as ort; s = ort.InferenceSession(%r, providers=['CPUExecutionProvider']);"
        "print(s.run(['logits'], {'input': np.random.rand(2, 1, 28, 28).astype(np.float32)})[0].shape)"
    ) % str(path)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "(2, 10)"


def test_onnx_parity_failure_is_reported(tmp_path):
    torch.manual_seed(2)
    model = create_model("cnn_small_mnist").eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, torch.rand(1, 1, 28, 28), exporter="torchscript")
    assert check_onnx_parity(path, model, torch.rand(3, 1, 28, 28)) <= 1e-4
    with torch.no_grad():
        model.net[-1].bias.add_(0.01)
    with pytest.raises(CoreError) as err:
        check_onnx_parity(path, model, torch.rand(3, 1, 28, 28))
    assert err.value.code == "onnx_mismatch"
