"""Architectures, by name: a registry and ``create_model(name, **kwargs)``.

Every model returned is a :class:`NormalizedModel` — ``net(normalize(x))`` — so attacks, noise and
bounds work on inputs in [0, 1] pixel space, and ``net`` is a plain torchvision-style module whose
state dict loads into the same architecture built with plain ``nn`` layers (the dense export saves
``net`` alone, with mean/std as metadata). The certified-setting CNNs are flat ``nn.Sequential``s of
Conv2d/ReLU/Flatten/Linear only, so the interval/CROWN bound code can walk them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import CoreError
from core.registry import Registry

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),  # the 60,000 training images' pixel mean and std
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}
TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean``/``std`` are (C,) buffers (saved with the model)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class NormalizedModel(nn.Module):
    """``net(normalize(x))``: a classifier on [0, 1] pixels."""

    def __init__(self, net: nn.Module, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, ...]
    normalization: str
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[_Entry] = Registry("architecture", "model.arch")


def register_model(name: str, *, input_shape: Sequence[int], normalization: str, description: str | None = None):
    """Register ``builder(**kwargs) -> plain nn.Module`` under ``name``; its keyword defaults are the
    documented defaults (``num_classes`` included). ``create_model`` adds the normalisation."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(builder).parameters
        defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        doc = description or (inspect.getdoc(builder) or name).splitlines()[0]
        MODELS.register(name, _Entry(builder, doc, tuple(input_shape), normalization, defaults))
        return builder

    return wrap


def list_models() -> dict[str, dict[str, Any]]:
    """Every registered architecture: description, default kwargs, input shape (C, H, W), classes.

    Any torchvision classifier is also available as ``torchvision:<name>`` (not listed one by one).
    """
    return {
        name: {
            "description": e.description,
            "kwargs": {**e.defaults, "normalization": e.normalization},
            "input_shape": list(e.input_shape),
            "num_classes": e.defaults.get("num_classes"),
        }
        for name, e in MODELS.items()
    }


def is_catalogue_name(name: str) -> bool:
    """A registered architecture or a ``torchvision:<name>`` / ``timm:<name>`` one (checked when built)."""
    return name in MODELS or name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def create_model(name: str, **kwargs: Any) -> NormalizedModel:
    """Build architecture ``name`` (weights=None) wrapped with its input normalisation.

    kwargs: the architecture's own (``num_classes``, ``in_channels`` where meaningful, ...), plus
    ``normalization`` in {mnist, cifar10, svhn, imagenet, none} and/or explicit ``mean``/``std``.
    """
    norm_name = kwargs.pop("normalization", None)
    mean, std = kwargs.pop("mean", None), kwargs.pop("std", None)
    if name.startswith(TORCHVISION_PREFIX):
        net, in_channels = _torchvision(name[len(TORCHVISION_PREFIX) :], kwargs), 3
        default_norm = "imagenet"
    elif name.startswith(TIMM_PREFIX):
        net, in_channels = _timm(name[len(TIMM_PREFIX) :], kwargs), int(kwargs.get("in_chans", 3))
        default_norm = "imagenet"
    else:
        if name not in MODELS:
            raise CoreError(
                "unknown_architecture",
                "model.arch",
                f"unknown architecture {name!r}; known: {', '.join(MODELS.names())}, torchvision:<name>, timm:<name>",
            )
        entry = MODELS.get(name)
        _check_kwargs(name, entry, kwargs)
        net = entry.builder(**kwargs)
        in_channels = kwargs.get("in_channels", entry.defaults.get("in_channels", entry.input_shape[0]))
        default_norm = entry.normalization
    return NormalizedModel(net, _normalize(norm_name or default_norm, mean, std, in_channels))


def _check_kwargs(name: str, entry: _Entry, kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(entry.defaults))
    if unknown:
        raise CoreError(
            "invalid_model_kwargs",
            "model.kwargs",
            f"{name} does not take {', '.join(unknown)}; it takes {', '.join(sorted(entry.defaults))}, "
            "normalization, mean, std",
        )
    for key in ("num_classes", "in_channels"):
        if key in kwargs and (not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool) or kwargs[key] < 1):
            raise CoreError(
                "invalid_model_kwargs", "model.kwargs", f"{key} must be a positive integer, got {kwargs[key]!r}"
            )


def _normalize(norm_name: str, mean: Any, std: Any, in_channels: int) -> Normalize:
    if norm_name not in NORMALIZATIONS:
        raise CoreError(
            "invalid_normalization",
            "model.kwargs.normalization",
            f"unknown normalization {norm_name!r}; known: {', '.join(NORMALIZATIONS)}",
        )
    preset = NORMALIZATIONS[norm_name] or ((0.0,), (1.0,))
    mean = list(mean) if mean is not None else list(preset[0])
    std = list(std) if std is not None else list(preset[1])
    if len(mean) == 1:
        mean = mean * in_channels
    if len(std) == 1:
        std = std * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise CoreError(
            "invalid_normalization",
            "model.kwargs.mean",
            f"mean/std need 1 or {in_channels} values, got {len(mean)} and {len(std)}",
        )
    if any(not s > 0 for s in std):
        raise CoreError("invalid_normalization", "model.kwargs.std", f"std must be > 0, got {std}")
    return Normalize(mean, std)


def _torchvision(tv_name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in known:
        raise CoreError(
            "unknown_architecture",
            "model.arch",
            f"torchvision has no classifier {tv_name!r}; known: {', '.join(sorted(known))}",
        )
    try:
        return torchvision.models.get_model(tv_name, weights=None, **kwargs)
    except (TypeError, ValueError) as err:
        raise CoreError("invalid_model_kwargs", "model.kwargs", f"torchvision:{tv_name}: {err}") from err


def _timm(timm_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A timm architecture, never with downloaded weights (``pretrained=False``: weights come from the
    user's upload, ``model.checkpoint``). ``num_classes`` / ``in_chans`` and timm's own arguments pass
    through; timm's default input normalisation is ImageNet's, as here."""
    import timm

    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name[:12]}*")[:10] if timm_name else []
        raise CoreError(
            "unknown_architecture",
            "model.arch",
            f"timm has no architecture {timm_name!r}" + (f"; similar: {', '.join(close)}" if close else ""),
        )
    if "pretrained" in kwargs:
        raise CoreError(
            "invalid_model_kwargs",
            "model.kwargs",
            "timm weights are not downloaded; upload them (POST /v1/models) and name them in model.checkpoint",
        )
    try:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise CoreError("invalid_model_kwargs", "model.kwargs", f"timm:{timm_name}: {err}") from err


# ------------------------------------------------------------------ certified-setting CNNs
#: The certified-training CNNs' layers: convolutions (out channels, kernel, stride; padding 1, each then a
#: ReLU) and hidden linear widths (each then a ReLU) before the classifier.
_CnnLayers = tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]
_CNN_SMALL: _CnnLayers = (((16, 4, 2), (32, 4, 2)), (100,))
_CNN_LARGE: _CnnLayers = (((32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)), (512, 512))


def _certified_cnn_layers(
    layers: _CnnLayers,
    in_channels: int,
    input_size: int,
    num_classes: int,
) -> nn.Sequential:
    convs, hidden = layers
    side = _after_two_stride2(input_size)
    modules: list[nn.Module] = []
    channels = in_channels
    for out, kernel, stride in convs:
        modules += [nn.Conv2d(channels, out, kernel, stride=stride, padding=1), nn.ReLU()]
        channels = out
    modules.append(nn.Flatten())
    width = channels * side * side
    for units in hidden:
        modules += [nn.Linear(width, units), nn.ReLU()]
        width = units
    modules.append(nn.Linear(width, num_classes))
    return nn.Sequential(*modules)


def _after_two_stride2(input_size: int) -> int:
    if not isinstance(input_size, int) or input_size < 4:
        raise CoreError(
            "invalid_model_kwargs", "model.kwargs", f"input_size must be an integer >= 4, got {input_size!r}"
        )
    side = input_size
    for _ in range(2):
        side = (side + 2 - 4) // 2 + 1
    return side


def _certified_cnn(layers: _CnnLayers, channels: int, side: int) -> Callable[..., nn.Module]:
    """A builder of ``layers`` whose keyword defaults (the catalogue's) are a ``channels`` x ``side`` input."""

    def build(num_classes: int = 10, in_channels: int = channels, input_size: int = side) -> nn.Module:
        return _certified_cnn_layers(layers, in_channels, input_size, num_classes)

    return build


# The certified-training CNNs, for MNIST- and CIFAR-sized input: name, layers, input (channels, side),
# normalisation, description.
_CERTIFIED_CNNS = (
    (
        "cnn_small_mnist",
        _CNN_SMALL,
        (1, 28),
        "mnist",
        "Small certified-training CNN (2 conv + 2 linear), MNIST-sized input.",
    ),
    (
        "cnn_large_mnist",
        _CNN_LARGE,
        (1, 28),
        "mnist",
        "Large certified-training CNN (4 conv + 3 linear), MNIST-sized input.",
    ),
    (
        "cnn_small_cifar",
        _CNN_SMALL,
        (3, 32),
        "cifar10",
        "Small certified-training CNN (2 conv + 2 linear, ~0.21M params), CIFAR-sized input.",
    ),
    (
        "cnn_large_cifar",
        _CNN_LARGE,
        (3, 32),
        "cifar10",
        "Large certified-training CNN (4 conv + 3 linear, ~2.47M params), CIFAR-sized input.",
    ),
)
for _name, _layers, (_channels, _side), _normalization, _description in _CERTIFIED_CNNS:
    register_model(
        _name, input_shape=(_channels, _side, _side), normalization=_normalization, description=_description
    )(_certified_cnn(_layers, _channels, _side))


# ------------------------------------------------------------------ VGG16-BN (CIFAR)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with batch norm, CIFAR head as in the HYDRA code: avgpool to 2x2, 2048-256-256-classes."""

    def __init__(self, cfg: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(c * 2 * 2, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg16_bn", input_shape=(3, 32, 32), normalization="cifar10")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG16 with batch norm, CIFAR variant (15.3M params)."""
    return VGG(_VGG16, in_channels, num_classes)


# ------------------------------------------------------------------ WideResNet (CIFAR)
class _WideBasic(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.equal = c_in == c_out and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Pre-activation WideResNet (Zagoruyko & Komodakis), as in the TRADES/HYDRA code."""

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise CoreError("invalid_model_kwargs", "model.kwargs", f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks = []
        for i, stride in enumerate((1, 2, 2)):
            blocks.append(
                nn.Sequential(
                    *[
                        _WideBasic(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1)
                        for j in range(n)
                    ]
                )
            )
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(self.relu(self.bn(x)), 1)
        return self.fc(torch.flatten(x, 1))


@register_model("wrn_28_4", input_shape=(3, 32, 32), normalization="cifar10")
def wrn_28_4(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """WideResNet-28-4, CIFAR variant (5.85M params)."""
    return WideResNet(28, 4, in_channels, num_classes)


@register_model("wrn_28_10", input_shape=(3, 32, 32), normalization="cifar10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """WideResNet-28-10, CIFAR variant (36.5M params)."""
    return WideResNet(28, 10, in_channels, num_classes)


# ------------------------------------------------------------------ ResNets
class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        # ReLU modules, not F.relu: core.robust.attacks.smooth_relu_backward (the training attack's
        # surrogate gradient) reaches nn.ReLU modules only. No parameters: the state dict is unchanged.
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool (He et al. 2016, CIFAR variant)."""

    def __init__(self, blocks: Sequence[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, c = [], 64
        for i, n in enumerate(blocks):
            width, stride = 64 * 2**i, 1 if i == 0 else 2
            layers.append(
                nn.Sequential(*[_BasicBlock(c if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)])
            )
            c = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(c, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model("resnet18", input_shape=(3, 32, 32), normalization="cifar10")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18, CIFAR variant (11.2M params)."""
    return CifarResNet((2, 2, 2, 2), in_channels, num_classes)


@register_model("resnet50", input_shape=(3, 224, 224), normalization="imagenet")
def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50, torchvision ImageNet architecture (25.6M params)."""
    import torchvision

    return torchvision.models.resnet50(weights=None, num_classes=num_classes)
