"""Where the browser test keeps its screenshots (``$HYDRA_TEST_ARTIFACTS/ui``, default
``/tmp/hydra-test-artifacts/ui``)."""

from __future__ import annotations

import os
from pathlib import Path


def artifacts_dir() -> Path:
    path = Path(os.environ.get("HYDRA_TEST_ARTIFACTS", "/tmp/hydra-test-artifacts")) / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path
