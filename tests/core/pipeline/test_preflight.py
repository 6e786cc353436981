"""The submission-time dry forward: a network that cannot take its dataset's inputs is refused, naming
the field, before anything loads or trains; a network that fits passes, cheaply."""

import numpy as np
import pytest
import torch

from core.errors import CoreError
from core.pipeline import preflight as preflight_mod
from core.pipeline.preflight import dataset_signature, preflight, shape_error
from core.spec import load_spec


def spec(arch="cnn_small_mnist", dataset="mnist5k", **kwargs):
    data = {"name": dataset}
    if dataset in ("npz", "imagefolder"):
        data["path"] = kwargs.pop("path", "/nowhere/data.npz")
    if "num_classes" in kwargs and dataset in ("npz", "imagefolder"):
        data["num_classes"] = kwargs.pop("num_classes")
    return load_spec({"model": {"arch": arch, "kwargs": kwargs}, "dataset": data})


def refused(s, dataset_info=None) -> CoreError:
    with pytest.raises(CoreError) as info:
        preflight(s, dataset_info)
    assert info.value.code == "incompatible_architecture"
    return info.value


@pytest.mark.parametrize(
    "arch, dataset",
    [
        ("cnn_small_mnist", "mnist5k"),
        ("cnn_large_mnist", "mnist"),
        ("cnn_small_cifar", "cifar10"),
        ("resnet18", "svhn"),
    ],
)
def test_networks_that_fit_their_dataset_pass(arch, dataset):
    assert preflight(spec(arch, dataset)) is None


def test_a_three_channel_network_on_grey_digits_is_refused():
    # The input normalisation would silently broadcast 1 channel to 3: the forward alone would pass.
    err = refused(spec("cnn_small_cifar", "mnist5k"))
    assert err.field == "model.arch"
    assert "3-channel" in err.message and "has 1" in err.message and "mnist5k" in err.message


def test_channels_set_in_kwargs_name_that_field():
    err = refused(spec("cnn_small_mnist", "mnist5k", in_channels=3, normalization="cifar10"))
    assert err.field == "model.kwargs.in_channels"


def test_a_network_built_for_another_image_size_is_refused_with_torchs_message():
    err = refused(spec("cnn_small_mnist", "cifar10", in_channels=3, normalization="cifar10"))
    assert err.field == "model.arch"
    assert "mat1 and mat2 shapes cannot be multiplied" in err.message and "3x32x32" in err.message
    # ... and the fix the message points at passes
    assert preflight(spec("cnn_small_mnist", "cifar10", in_channels=3, normalization="cifar10", input_size=32)) is None


def test_too_small_an_image_for_a_deep_network_is_refused():
    err = refused(spec("vgg16_bn", "mnist5k", in_channels=1, normalization="mnist"))
    assert "Output size is too small" in err.message and "built for inputs 3x32x32" in err.message


def test_the_output_width_must_equal_the_classes():
    err = refused(spec("cnn_small_mnist", "mnist5k", num_classes=5))
    assert err.field == "model.kwargs.num_classes"
    assert "gives 5 outputs" in err.message and "needs 10" in err.message


def test_bad_architecture_arguments_keep_their_own_error():
    with pytest.raises(CoreError) as info:
        preflight(spec("cnn_small_mnist", "mnist5k", depth=3))
    assert (info.value.code, info.value.field) == ("invalid_model_kwargs", "model.kwargs")


def test_an_uploaded_dataset_is_checked_against_what_its_upload_recorded():
    uploaded = {"input_shape": [3, 32, 32], "num_classes": 4}
    err = refused(spec("cnn_small_mnist", "npz", path="dataset:abc"), uploaded)
    assert "3x32x32" in err.message
    assert preflight(spec("cnn_small_cifar", "npz", path="dataset:abc"), uploaded) is None  # 4 outputs built
    # classes the spec declares win over the recorded ones, as when the worker loads the file
    assert dataset_signature(spec("cnn_small_cifar", "npz", path="dataset:abc", num_classes=6), uploaded)[1] == 6
    smaller = uploaded | {"input_shape": [3, 28, 28]}
    err = refused(spec("cnn_small_cifar", "npz", path="dataset:abc", num_classes=10), smaller)
    assert err.field == "model.arch" and "3x28x28" in err.message


@pytest.mark.parametrize("layout, shape", [("nhwc", (12, 16, 16, 3)), ("nchw", (12, 3, 16, 16)), ("nhw", (12, 16, 16))])
def test_a_local_npz_is_read_from_its_header(tmp_path, layout, shape):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros(shape, np.uint8), labels=np.arange(12) % 4)
    s = spec("cnn_small_cifar", "npz", path=str(path))
    channels = 1 if layout == "nhw" else 3
    assert dataset_signature(s)[:2] == ((channels, 16, 16), 4)
    err = refused(s)  # a CIFAR-sized CNN on 16x16 images (or on one channel)
    assert "16x16" in err.message
    if channels == 3:
        assert preflight(spec("cnn_small_cifar", "npz", path=str(path), input_size=16)) is None


def test_unknown_shapes_are_skipped_with_a_reason(tmp_path):
    reason = preflight(spec("cnn_small_mnist", "imagefolder", path=str(tmp_path)))
    assert reason and "imagefolder" in reason
    reason = preflight(spec("cnn_small_mnist", "npz", path=str(tmp_path / "missing.npz")))
    assert reason and "npz" in reason


def test_a_fitting_network_is_never_built_for_real(monkeypatch):
    built = []
    monkeypatch.setattr(preflight_mod, "_build_cpu", lambda *a: built.append(a))
    assert preflight(spec("wrn_28_10", "cifar10")) is None  # 36M parameters: shapes only, on the meta device
    assert built == []


def test_the_random_state_is_left_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    refused(spec("vgg16_bn", "mnist5k", in_channels=1, normalization="mnist"))  # builds on the CPU to confirm
    assert torch.equal(before, torch.random.get_rng_state())


def test_torch_shape_errors_become_one_coded_line():
    err = shape_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x2048 and 1568x100)\nmore"))
    assert (err.code, err.field) == ("shape_mismatch", "model.arch") and "\n" not in err.message
    assert shape_error(RuntimeError("CUDA out of memory")) is None
    assert shape_error(KeyError("size mismatch")) is None


def test_a_giant_network_is_refused_without_being_allocated(monkeypatch):
    monkeypatch.setattr(preflight_mod, "_build_cpu", lambda *a: pytest.fail("built for real"))
    # input_size 20000 asks for a first linear layer of 32 * 5000^2 * 100 = 8e10 weights (320 GB)
    err = refused(spec("cnn_small_mnist", "mnist5k", input_size=20000))
    assert err.field == "model.arch" and "same reduction dim" in err.message


def test_given_what_the_caller_knows_no_local_file_is_opened(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.arange(4))
    monkeypatch.setattr(preflight_mod, "_npz_header", lambda *a: pytest.fail("opened a local file"))
    reason = preflight(spec("cnn_small_mnist", "npz", path=str(path)), {"input_shape": None, "num_classes": 4})
    assert reason and "not recorded" in reason
