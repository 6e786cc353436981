"""timm as a catalogue source (``timm:<name>``), its uploaded weights, and a timm network through ONNX."""

import io
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from core.errors import CoreError
from core.io.weights import load_weights
from core.models.onnx_import import import_onnx
from core.models.onnx_network import create_onnx_model
from core.models.zoo import create_model
from core.pruning.masked import convert_to_masked, masked_layers
from core.spec import load_spec


def test_a_timm_architecture_builds_with_the_imagenet_normalisation_and_no_download():
    model = create_model("timm:test_resnet", num_classes=3)
    assert torch.allclose(model.normalize.mean, torch.tensor([0.485, 0.456, 0.406]))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert load_spec({"model": {"arch": "timm:test_resnet"}}).model.arch == "timm:test_resnet"
    with pytest.raises(CoreError, match="timm has no architecture 'no_such_net'") as err:
        create_model("timm:no_such_net")
    assert err.value.field == "model.arch"
    with pytest.raises(CoreError, match="not downloaded") as err:
        create_model("timm:test_resnet", pretrained=True)
    assert err.value.field == "model.kwargs"


def test_uploaded_timm_weights_load_into_the_catalogue_network(tmp_path):
    torch.manual_seed(1)
    trained = timm.create_model("test_efficientnet", num_classes=4).eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, path)
    model = convert_to_masked(create_model("timm:test_efficientnet", num_classes=4, normalization="none"))
    info = load_weights(path, model)
    assert info["format"] == "safetensors" and masked_layers(model)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), trained(x), atol=1e-5)


def test_a_timm_network_exported_to_onnx_converts_within_atol():
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=3).eval()  # depthwise, SiLU, squeeze-excite
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, 32, 32),), buffer, dynamo=False, opset_version=17)
    with pytest.raises(CoreError, match="export it with a dynamic batch axis"):  # a batch of 2 built in
        import_onnx(buffer.getvalue())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"input": {0: "batch"}}
        torch.onnx.export(
            net, (torch.rand(2, 3, 32, 32),), buffer, dynamo=False, input_names=["input"], dynamic_axes=axes
        )
    imported = import_onnx(buffer.getvalue())
    assert imported.parity_max_abs_diff <= 1e-4
    model = convert_to_masked(create_onnx_model(imported))
    assert len(masked_layers(model)) == imported.op_counts["Conv"] + imported.op_counts["Gemm"]
