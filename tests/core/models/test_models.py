"""The architecture registry: every model builds, the paper's sizes are right, normalisation is inside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import CoreError
from core.models.zoo import Normalize, NormalizedModel, create_model, list_models
from core.pruning.masked import convert_to_masked

# parameter counts of the paper's networks (10 classes); docs/METHOD.md quotes 15.3M, 5.85M, 25.6M, ~0.21M, ~2.47M
PAPER_SIZES = {
    "vgg16_bn": (15.3e6, 0.05e6),
    "wrn_28_4": (5.85e6, 0.01e6),
    "cnn_small_cifar": (214_918, 0),
    "cnn_large_cifar": (2_466_858, 0),
    "resnet50": (25.6e6, 0.05e6),
}
SMALL = {"cnn_small_mnist", "cnn_large_mnist", "cnn_small_cifar", "cnn_large_cifar", "resnet18"}
CERTIFIED = ["cnn_small_mnist", "cnn_large_mnist", "cnn_small_cifar", "cnn_large_cifar"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(list_models()))
def test_registry_entry_builds(name):
    info = list_models()[name]
    assert info["description"] and info["num_classes"] == info["kwargs"]["num_classes"]
    model = create_model(name)
    assert isinstance(model, NormalizedModel) and isinstance(model.normalize, Normalize)
    assert model.normalize.mean.shape == (info["input_shape"][0],)
    assert set(model.state_dict()) == {"normalize.mean", "normalize.std"} | {f"net.{k}" for k in model.net.state_dict()}
    if name in SMALL:  # forward only the small ones (2 CPU cores)
        model.eval()
        x = torch.rand(2, *info["input_shape"])
        with torch.no_grad():
            assert model(x).shape == (2, info["num_classes"])


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_parameter_counts(name):
    want, tol = PAPER_SIZES[name]
    num_classes = 1000 if name == "resnet50" else 10
    assert abs(n_params(create_model(name, num_classes=num_classes).net) - want) <= tol


@pytest.mark.parametrize("name", CERTIFIED)
def test_certified_cnns_are_flat_sequentials(name):
    net = create_model(name).net
    assert isinstance(net, nn.Sequential)
    assert {type(m) for m in net} <= {nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear}


def test_net_state_dict_loads_into_plain_architecture_and_masked_copy():
    model = convert_to_masked(create_model("cnn_small_cifar", num_classes=4))
    plain = create_model("cnn_small_cifar", num_classes=4)
    dense_keys = set(plain.net.state_dict())
    plain.net.load_state_dict({k: v for k, v in model.net.state_dict().items() if k in dense_keys})
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(plain(x), model(x))


def test_normalisation_is_inside_the_model():
    model = create_model("cnn_small_mnist", normalization="none")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x), model.net(x))
    model = create_model("cnn_small_mnist")
    torch.testing.assert_close(model(x), model.net((x - 0.1307) / 0.3081))
    custom = create_model("cnn_small_cifar", mean=[0.5, 0.5, 0.5], std=[0.25])
    assert custom.normalize.std.tolist() == [0.25, 0.25, 0.25]
    assert create_model("resnet18", normalization="svhn").normalize.mean.shape == (3,)
    assert create_model("cnn_small_cifar", in_channels=1, input_size=28, normalization="mnist")(x).shape == (2, 10)


def test_torchvision_classifiers():
    model = create_model("torchvision:mobilenet_v2", num_classes=7)
    assert isinstance(model, NormalizedModel)
    assert model.normalize.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert model.net.classifier[-1].out_features == 7
    with pytest.raises(CoreError) as err:
        create_model("torchvision:not_a_net")
    assert err.value.field == "model.arch"


def test_bad_names_and_kwargs_are_refused():
    with pytest.raises(CoreError) as err:
        create_model("alexnet9000")
    assert err.value.code == "unknown_architecture" and err.value.field == "model.arch"
    assert "vgg16_bn" in err.value.message
    with pytest.raises(CoreError) as err:
        create_model("resnet18", depth=3)
    assert err.value.field == "model.kwargs"
    with pytest.raises(CoreError):
        create_model("resnet18", num_classes=0)
    with pytest.raises(CoreError):
        create_model("resnet18", normalization="mnist2")
    with pytest.raises(CoreError):
        create_model("resnet18", mean=[0.1, 0.2])
