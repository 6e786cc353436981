"""Suite-wide: the embedded default's data directory (service/settings.py) is a throwaway folder, so
no test reads or writes the developer's own ``~/.local/share/hydra-compress``. Set before any test
module builds settings; a test that needs another one sets ``HYDRA_DATA_DIR`` itself."""

from __future__ import annotations

import os
import tempfile

# One intra-op thread: the suite's tensors are tiny, and on a shared 2-core machine OpenMP's spinning
# threads made small ops ~70x slower (measured: 1,000 cross-entropies of a 48x2 batch took 1.19 s
# with 2 threads under load, 0.017 s with 1). Worker processes started by tests inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

if "HYDRA_DATA_DIR" not in os.environ:
    os.environ["HYDRA_DATA_DIR"] = tempfile.mkdtemp(prefix="hydra-test-data-")
