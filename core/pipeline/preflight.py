"""Refuse at submission a network that cannot run on its dataset: one dry forward, no data loaded.

A job whose architecture does not fit its data (3-channel network on 1-channel digits, an MNIST-sized
CNN on 32x32 images, 100 outputs for 10 classes) would otherwise fail after its data loaded — or, for
channels, silently train on a grey image broadcast to three channels by the input normalisation. The
API (``POST /v1/jobs``) and the CLI (``hydra-compress run``) call ``preflight(spec)`` before anything
trains; it raises ``CoreError(code, field, detail)`` naming ``model.arch`` (or the ``model.kwargs``
entry at fault).

What the dataset looks like is known without loading it: the catalogue's static ``input_shape`` and
``num_classes`` (``core.data.datasets.dataset_catalogue``) for mnist5k/mnist/cifar10/svhn; for an upload, what
the service stored when it checked the file (passed in as ``dataset_info``); for a local ``.npz``, the
header of its ``images`` array and its ``labels``. An image folder is only known once it loads (image
sizes vary until resized), so its shape check is skipped and the reason returned.

The forward runs on the ``meta`` device first (no memory, no weight init: milliseconds even for a
ResNet-50); only if that raises is the network built for real on the CPU, batch 1 under ``no_grad``,
so the refusal quotes PyTorch's own CPU message (not for networks above ``MAX_REAL_BUILD_PARAMS``:
``model.kwargs`` can ask for an enormous one). Nothing is cached.

A channel-granularity job (``pruning.granularity: channel``) is also checked for what the physical
rebuild can handle (``core.pruning.structured.check_channel_supported``: one trace, random channels
masked, the rebuilt network must give the masked one's logits), on the CPU, batch 2 of random inputs
of the dataset's shape; refused with ``CoreError(field="pruning.granularity")``. When the shape is
unknown here (or the network is too big to build), the run checks it when it starts.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.data.datasets import DATASETS
from core.errors import CoreError
from core.spec import JobSpec

if TYPE_CHECKING:
    from core.models.onnx_import import ImportedNetwork

INCOMPATIBLE = "incompatible_architecture"
SHAPE_ERROR = "shape_mismatch"
# Above this many parameters a refusal is worded from the meta device's message rather than confirmed
# by building the network for real (WRN-28-10 has 36 M, ResNet-50 25.6 M).
MAX_REAL_BUILD_PARAMS = 100_000_000


def dataset_signature(
    spec: JobSpec, dataset_info: Mapping[str, Any] | None = None
) -> tuple[tuple[int, ...] | None, int | None, str | None]:
    """``(input_shape (C, H, W), num_classes, why_unknown)`` of the spec's dataset, without loading it.

    ``dataset_info`` (``input_shape``, ``num_classes``) is what a caller already knows, e.g. the
    service's record of an uploaded ``.npz``; a ``num_classes`` the spec declares wins over it, as it
    does when the worker loads the file. Given, no local file is opened (``dataset.path`` may name
    an upload, not a file)."""
    ds = spec.dataset
    declared = ds.num_classes
    entry = DATASETS.get(ds.name).info
    if entry.get("input_shape") and entry.get("num_classes"):  # a catalogue dataset: its shape is known
        return tuple(entry["input_shape"]), int(entry["num_classes"]), None
    if dataset_info is not None:  # the caller's knowledge replaces a look at local files
        classes = declared or dataset_info.get("num_classes")
        classes = int(classes) if classes else None
        if dataset_info.get("input_shape"):
            return tuple(int(s) for s in dataset_info["input_shape"]), classes, None
        return None, classes, "the dataset's input shape was not recorded; it is checked when it loads"
    if ds.name == "npz" and ds.path:
        shape, classes = _npz_header(ds.path, declared)
        if shape is not None:
            return shape, classes, None
        return None, declared, "the .npz 'images' header could not be read here; its shape is checked when it loads"
    return None, declared, f"the image size of a {ds.name!r} dataset is known only once it loads"


def _npz_header(path: str, declared: int | None) -> tuple[tuple[int, ...] | None, int | None]:
    """The (C, H, W) of a local .npz's ``images`` from the array header alone, and its classes (the
    declared count, else the largest label + 1: labels are small). Channel rule as ``core.data.datasets``:
    3 dims = one channel; 4 dims = channels first if axis 1 is 1 or 3, else last if axis 3 is. Any
    problem gives ``(None, None)``: the loader reports a broken file properly, with its field."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape = np.lib.format.read_array_header_1_0(member)[0]
            elif version == (2, 0):
                shape = np.lib.format.read_array_header_2_0(member)[0]
            else:
                return None, None
        if len(shape) == 3:
            chw: tuple[int, ...] | None = (1, int(shape[1]), int(shape[2]))
        elif len(shape) == 4 and shape[1] in (1, 3):
            chw = tuple(int(s) for s in shape[1:])
        elif len(shape) == 4 and shape[3] in (1, 3):
            chw = (int(shape[3]), int(shape[1]), int(shape[2]))
        else:
            return None, None
        classes = declared
        if classes is None:
            with np.load(path, allow_pickle=False) as npz:
                labels = npz["labels"]
                classes = int(labels.max()) + 1 if labels.size else None
        return chw, classes
    except Exception:  # noqa: BLE001 - unreadable here means "unknown", never a refusal
        return None, None


def needs_bounds(spec: JobSpec) -> bool:
    """True when the job's objective, or a stage's, bounds every layer (MixTrain, CROWN-IBP)."""
    from core.objectives import objective_class

    stages = (spec.stages.pretrain, spec.stages.prune, spec.stages.finetune)
    objectives = [spec.objective] + [getattr(s, "objective", None) for s in stages if s is not None]
    return any(objective_class(o.type).needs_bounds for o in objectives if o is not None)


def preflight(
    spec: JobSpec, dataset_info: Mapping[str, Any] | None = None, onnx_info: Mapping[str, Any] | None = None
) -> str | None:
    """Refuse an architecture that cannot take the dataset's inputs or gives the wrong number of
    outputs: build it with the dataset's ``num_classes`` (unless ``model.kwargs`` sets one) and run one
    forward on a zero batch of the dataset's input shape.

    When an objective bounds every layer (``needs_bounds``), the same network is checked for layers the
    bounds cannot handle (``unsupported_layer`` on ``model.arch``): submission builds the network once.

    Returns ``None`` when everything was checked, else the reason the shape check was skipped.
    Raises ``CoreError``: ``incompatible_architecture`` on ``model.arch`` (or ``model.kwargs.<name>``),
    or whatever ``create_model`` raises for bad architecture arguments (``model.kwargs``)."""

    shape, num_classes, skipped = dataset_signature(spec, dataset_info)
    if spec.model.onnx is not None:
        check_ranges(spec, nn.Identity(), shape)  # the radii; k of a graph's layers is checked at the run
        return _preflight_onnx(spec, shape, num_classes, skipped, onnx_info)
    arch = spec.model.arch
    kwargs = dict(spec.model.kwargs)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    bounded = needs_bounds(spec)  # the bound check reads values: then the one build is a real one
    model, device = (_build_cpu(arch, kwargs), "cpu") if bounded else _build_meta(arch, kwargs)
    if bounded:  # the same network: one build per submission
        from core.certify.bounds import check_supported

        check_supported(model)  # CoreError("unsupported_layer", "model.arch", ...): MixTrain/CROWN-IBP
    check_ranges(spec, model, shape)
    if shape is None:
        return skipped
    where = f"dataset {spec.dataset.name!r} (inputs {_fmt(shape)}, {num_classes or '?'} classes)"
    channels = _input_channels(model)
    if channels is not None and channels != shape[0]:
        field = "model.kwargs.in_channels" if "in_channels" in spec.model.kwargs else "model.arch"
        if arch.startswith("timm:"):
            hint = "set model.kwargs.in_chans (with a normalization of as many channels)"
        elif arch.startswith("torchvision:"):
            hint = "torchvision classifiers take 3 channels"
        else:
            hint = "set model.kwargs.in_channels (with a normalization of as many channels)"
        hint += " or choose another architecture"
        raise CoreError(
            INCOMPATIBLE, field, f"{arch} takes {channels}-channel inputs but {where} has {shape[0]}; {hint}"
        )
    try:
        out = _forward(model, shape, device)
    except Exception as meta_exc:
        if device == "meta" and sum(p.numel() for p in model.parameters()) > MAX_REAL_BUILD_PARAMS:
            # never allocate a giant network (model.kwargs can ask for one) just to word the refusal
            raise CoreError(
                INCOMPATIBLE,
                "model.arch",
                f"{arch} cannot take the inputs of {where}: {_first_line(meta_exc)}{_arch_hint(arch)}",
            ) from meta_exc
        real = model if device == "cpu" else _build_cpu(arch, kwargs)
        try:
            out = _forward(real, shape, "cpu")
        except Exception as exc:
            raise CoreError(
                INCOMPATIBLE,
                "model.arch",
                f"{arch} cannot take the inputs of {where}: {_first_line(exc)}{_arch_hint(arch)}",
            ) from exc
    if out.dim() != 2:
        raise CoreError(
            INCOMPATIBLE,
            "model.arch",
            f"{arch} gives outputs of shape {tuple(out.shape)} on {where}, not (batch, classes)",
        )
    if num_classes is not None and out.shape[1] != num_classes:
        field = "model.kwargs.num_classes" if "num_classes" in spec.model.kwargs else "model.arch"
        raise CoreError(INCOMPATIBLE, field, f"{arch} gives {out.shape[1]} outputs but {where} needs {num_classes}")
    _check_budget(spec, model)
    if spec.pruning.granularity == "channel":
        _check_channel(model, device, arch, kwargs, shape)
    return None


def check_ranges(spec: JobSpec, model: nn.Module, shape: tuple[int, ...] | None) -> None:
    """Refuse (422) values no real job can use, which would otherwise run for hours to no purpose:

    - an attack radius beyond the input range (``invalid_eps``): inputs live in pixel space [0, 1]
      (normalisation is inside the network), so an l_inf ball of radius >= 1 already holds every image
      and an l_2 ball cannot usefully exceed the box's diameter, sqrt(C·H·W) (checked once the shape is
      known). Checked for the job's objective, each stage's override and the evaluation's ball
      (``core.pipeline.evaluate.attack_settings``: its own eps/norm, else the objective's);
    - a keep fraction ``k`` that keeps no weight of some conv/linear layer under the uniform allocation
      (``invalid_k``, naming the layer; the global and learned allocations are ``_check_budget``'s)."""
    diameter = math.sqrt(math.prod(shape)) if shape else None
    limits = {"linf": (1.0, "1 (the whole [0, 1] pixel range)")}
    if diameter is not None:
        limits["l2"] = (diameter, f"{diameter:.4g}, the diameter sqrt({_fmt(shape)}) of the input box")

    def check(field: str, norm: str, eps: float) -> None:
        bound = limits.get(norm)
        if bound is not None and eps > bound[0]:
            raise CoreError("invalid_eps", field, f"an {norm} radius of {eps:g} exceeds {bound[1]}")

    owners = [("objective", spec.objective)] + [
        (f"stages.{name}.objective", stage.objective)
        for name in ("pretrain", "prune", "finetune")
        if (stage := getattr(spec.stages, name)) is not None and stage.objective is not None
    ]
    for where, objective in owners:
        ball = objective.ball()
        if ball is not None:
            check(f"{where}.eps", ball.norm, ball.eps)
    if spec.evaluation.eps is not None:
        ball = spec.objective.ball()
        check("evaluation.eps", spec.evaluation.norm or (ball.norm if ball else "linf"), spec.evaluation.eps)

    if spec.pruning.allocation != "uniform" or spec.pruning.granularity != "unstructured":
        return  # global/learned: _check_budget; channel: at least one channel is always kept
    from core.pruning.masked import kept_count

    layers = [
        (name, m.weight.numel())
        for name, m in model.named_modules()
        if type(m) in (nn.Conv2d, nn.Linear)  # the layers convert_to_masked converts
    ]
    for k in spec.pruning.k:
        for name, size in layers:
            if kept_count(size, k) < 1:
                smallest = min(layers, key=lambda layer: layer[1])
                raise CoreError(
                    "invalid_k",
                    "pruning.k",
                    f"k = {k:g} keeps no weight of layer {name!r} ({size} weights): every layer keeps the "
                    f"fraction k of its weights; k = {1 / smallest[1]:.3g} keeps one weight of the smallest "
                    f"layer, {smallest[0]!r} ({smallest[1]} weights)",
                )


def _preflight_onnx(
    spec: JobSpec,
    shape: tuple[int, ...] | None,
    num_classes: int | None,
    skipped: str | None,
    onnx_info: Mapping[str, Any] | None,
) -> str | None:
    """``model.onnx``: the graph's input shape and classes against the data set's (``model.onnx``), and a
    bound objective against the bound code's layers. A local file is imported (checked, converted,
    verified: ``core.models.onnx_network.load_onnx``); an upload's record (``onnx_info``: ``input_shape``,
    ``num_classes``) stands for it when the caller has one."""
    from core.models.onnx_import import ImportedNetwork
    from core.models.onnx_network import check_fits_dataset, create_onnx_model, load_onnx
    from core.spec import BOUND_OBJECTIVES

    onnx = spec.model.onnx
    assert onnx is not None
    source: ImportedNetwork | None = None
    if onnx_info is not None:
        graph_shape, graph_classes = tuple(onnx_info["input_shape"]), int(onnx_info["num_classes"])
    elif onnx.startswith("model:"):
        return "the uploaded ONNX network is checked against the data when the job starts"
    else:
        source = load_onnx(onnx)
        graph_shape, graph_classes = source.input_shape, source.num_classes
    check_onnx_granularity(spec, source, onnx_info)
    stand_in = ImportedNetwork(nn.Identity(), "", "", "", graph_shape, graph_classes, 0, {}, 0, 0.0)
    check_fits_dataset(stand_in, shape, num_classes)
    objectives = [spec.objective] + [spec.objective_for(s) for s in ("pretrain", "prune", "finetune")]
    if source is not None and any(o.type in BOUND_OBJECTIVES for o in objectives):
        from core.certify.bounds import check_supported

        try:
            check_supported(create_onnx_model(source, **spec.model.kwargs))  # names the first unsupported layer
        except CoreError as err:
            raise CoreError(err.code, "model.onnx", f"{err.message} (needed by the bound-based objective)") from None
    return skipped if shape is None else None


def check_onnx_granularity(
    spec: JobSpec, source: ImportedNetwork | None = None, onnx_info: Mapping[str, Any] | None = None
) -> None:
    """Channel pruning of an imported graph: Torch-Pruning's dependency graph on the converted module must
    handle it and the smaller network must reproduce the masked one (``check_channel_supported``), else
    refused on ``pruning.granularity`` naming the node. ``onnx_info["channel_unsupported"]`` is the
    verdict an upload recorded (None: supported); a ``source`` is checked here; with neither, the run
    checks at its start (``Pruner.check_supported``)."""
    if spec.model.onnx is None or spec.pruning.granularity != "channel":
        return
    if onnx_info is not None and "channel_unsupported" in onnx_info:
        refusal = onnx_info["channel_unsupported"]
        if refusal:
            raise CoreError("channel_unsupported", "pruning.granularity", str(refusal))
        return
    if source is not None:
        from core.models.onnx_network import create_onnx_model

        refusal = onnx_channel_refusal(create_onnx_model(source, **spec.model.kwargs), source.input_shape)
        if refusal:
            raise CoreError("channel_unsupported", "pruning.granularity", refusal)


def onnx_channel_refusal(model: nn.Module, input_shape: Sequence[int]) -> str | None:
    """Why channel pruning cannot serve this imported network (None: it can); also recorded at upload."""
    from core.pruning.structured import check_channel_supported

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            check_channel_supported(model, torch.rand((2, *input_shape)))
        except CoreError as err:
            return err.message
        except Exception as exc:  # noqa: BLE001 - whatever the trace or rebuild trips over is the graph's
            return f"channel pruning cannot rebuild this graph: {_first_line(exc)}"
    return None


def _check_budget(spec: JobSpec, model: nn.Module) -> None:
    """A global or learned allocation spreads ``kept_count(N, k)`` weights over the layers: refuse (on
    ``pruning.k``) a ``k`` that cannot give every layer its minimum (learned: one weight; global:
    ``global_min_per_layer``)."""
    from core.pruning.masked import kept_count

    pruning = spec.pruning
    if pruning.allocation == "uniform":
        return
    sizes = [
        p.numel()
        for m in model.modules()
        if type(m) in (nn.Conv2d, nn.Linear)  # the layers convert_to_masked converts
        for name, p in m.named_parameters(recurse=False)
        if name == "weight"
    ]
    least = pruning.global_min_per_layer if pruning.allocation == "global" else 1
    for k in pruning.k:
        if sizes and kept_count(sum(sizes), k) < least * len(sizes):
            raise CoreError(
                "invalid_k",
                "pruning.k",
                f"k = {k:g} keeps {kept_count(sum(sizes), k)} of {sum(sizes)} weights, fewer than {least} in "
                f"each of the network's {len(sizes)} conv/linear layers",
            )


def _check_channel(model: nn.Module, device: str, arch: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse (``pruning.granularity``) a network channel pruning cannot rebuild; see the module doc.
    A network too large to build here is left to the run, which checks it before anything trains."""
    from core.pruning.structured import check_channel_supported

    if device == "meta" and sum(p.numel() for p in model.parameters()) > MAX_REAL_BUILD_PARAMS:
        return
    real = model if device == "cpu" else _build_cpu(arch, kwargs)
    with torch.random.fork_rng(devices=[]):
        try:
            check_channel_supported(real, torch.rand((2, *shape)))
        except CoreError:
            raise
        except Exception as exc:  # whatever the rebuild trips over is the architecture's
            raise CoreError(
                "channel_unsupported",
                "pruning.granularity",
                f"channel pruning cannot rebuild {arch}: {_first_line(exc)}",
            ) from exc


def check_host(spec: JobSpec) -> None:
    """Refuse (``CoreError``) a spec this machine cannot run, at the start of a local run rather than at
    its first batch: a device it does not have (``device_unavailable`` on ``device``: ``cuda`` with no
    GPU, ``cuda:N`` with N at or past ``torch.cuda.device_count()``) and more data-loading processes
    than it has cores (``too_many_workers`` on ``dataset.num_workers``). The service checks the same
    against its settings at submission (its API does not run on the workers' machines)."""
    import os

    device = spec.device
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            have = f"{count} GPU{'s' if count != 1 else ''}" + (f" (cuda:0 to cuda:{count - 1})" if count else "")
            raise CoreError("device_unavailable", "device", f"{device} is not available: this machine has {have}")
    cores = os.cpu_count() or 1
    if spec.dataset.num_workers > cores:
        raise CoreError(
            "too_many_workers",
            "dataset.num_workers",
            f"{spec.dataset.num_workers} data-loading processes on a machine with {cores} cores",
        )


def shape_error(exc: BaseException) -> CoreError | None:
    """A PyTorch shape failure raised during a run as a ``CoreError`` (``shape_mismatch`` on
    ``model.arch``) for a one-line report; ``None`` for anything else (a bug keeps its traceback)."""
    if not isinstance(exc, (RuntimeError, ValueError, AssertionError)):
        return None
    text = str(exc)
    markers = (
        "shapes cannot be multiplied",
        "size mismatch",
        "must match the size",
        "Output size is too small",
        "Invalid channel dimensions",
        "to have",
        "channels, but got",
        "Wrong image",
        "Expected input",
        "Expected more than 1 value per channel",
        "same reduction dim",
        "Given groups",
    )
    if not any(m in text for m in markers):
        return None
    return CoreError(SHAPE_ERROR, "model.arch", f"the network does not fit the data: {_first_line(exc)}")


def _build_meta(arch: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """The network on the meta device (no memory, no init: only the shapes), or built for real on the
    CPU when its builder cannot run there; with the device it is on."""
    from core.models.zoo import create_model

    try:
        with torch.device("meta"):
            return create_model(arch, **kwargs), "meta"  # bad kwargs: CoreError on model.kwargs
    except CoreError:
        raise
    except Exception:  # noqa: BLE001 - a builder the meta device cannot run: build it for real
        return _build_cpu(arch, kwargs), "cpu"


def _build_cpu(arch: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    from core.models.zoo import create_model

    with torch.random.fork_rng(devices=[]):  # building for real draws initial weights: leave the RNG be
        try:
            return create_model(arch, **kwargs)
        except CoreError:
            raise
        except Exception as exc:
            raise CoreError(
                "invalid_model_kwargs", "model.kwargs", f"{arch} cannot be built: {_first_line(exc)}"
            ) from exc


def _forward(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> torch.Tensor:
    model.eval()  # BatchNorm in training mode refuses a batch of one
    with torch.no_grad():
        out = model(torch.zeros((1, *shape), device=device))
    if not isinstance(out, torch.Tensor):
        raise CoreError(INCOMPATIBLE, "model.arch", f"the network returns {type(out).__name__}, not a tensor of logits")
    return out


def _input_channels(model: torch.nn.Module) -> int | None:
    """Channels the network expects: those of its input normalisation (one mean per channel)."""
    normalize = getattr(model, "normalize", None)
    mean = getattr(normalize, "mean", None)
    return int(mean.numel()) if isinstance(mean, torch.Tensor) else None


def _arch_hint(arch: str) -> str:
    from core.models.zoo import list_models

    entry = list_models().get(arch)
    return f" ({arch} is built for inputs {_fmt(entry['input_shape'])})" if entry else ""


def _fmt(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
