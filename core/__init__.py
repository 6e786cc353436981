"""hydra-compress core: robust training, HYDRA pruning, certification, exports — pure PyTorch.

The public face::

    from core import JobSpec, load_spec, run_job, create_model, load_compressed_model

Packages (docs/ARCHITECTURE.md): ``models`` (architectures), ``data`` (datasets, fair samples),
``pruning`` (masked layers, methods, allocations), ``objectives`` (training objectives, one module
each), ``robust`` (attacks, the evaluation attack suite), ``certify`` (bounds, randomized smoothing,
certificates), ``pipeline`` (plan, training loop, evaluation, reports), ``io`` (checkpoints,
exports). ``core`` imports no web, database, queue or storage library.

Names are resolved on first use (PEP 562), so ``import core.errors`` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "JobSpec": "core.spec",
    "load_spec": "core.spec",
    "run_job": "core.pipeline.runner",
    "RunInputs": "core.pipeline.runner",
    "create_model": "core.models.zoo",
    "list_models": "core.models.zoo",
    "load_compressed_model": "core.io.export",
    "CoreError": "core.errors",
}
__all__ = [
    "CoreError",
    "JobSpec",
    "RunInputs",
    "create_model",
    "list_models",
    "load_compressed_model",
    "load_spec",
    "run_job",
]

if TYPE_CHECKING:
    from core.errors import CoreError
    from core.io.export import load_compressed_model
    from core.models.zoo import create_model, list_models
    from core.pipeline.runner import RunInputs, run_job
    from core.spec import JobSpec, load_spec


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
