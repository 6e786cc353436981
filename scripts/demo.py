"""The end-to-end demo from a checkout, installed or not: ``python scripts/demo.py [options]``.

The program is ``launch/demo.py`` (also ``hydra-service demo`` and ``python -m launch.demo``, which
work from an installed wheel); this script only makes this checkout importable, for itself and for
the service the demo starts, then runs it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    from launch.demo import main

    raise SystemExit(main())
