"""A Python client of the HYDRA compression service: ``Client(url, api_key)``.

Needs only httpx, tqdm and PyYAML: it imports neither torch nor any of the service's code, so it can
be used from any machine that can reach the service. See ``hydra_client.client`` for the methods and
``hydra_client.cli`` for the command line (``hydra-client`` or ``hydra-compress submit/status/wait/...``).
Installs on its own with ``pip install ./hydra_client`` (``hydra_client/pyproject.toml``).
"""

__version__ = "0.1.0"  # the client distribution's version (hydra_client/pyproject.toml reads it)

from hydra_client.client import FINAL_STATUSES, Client, Event, load_spec_file
from hydra_client.display import comparison_table, event_line
from hydra_client.errors import HydraError

__all__ = [
    "__version__",
    "FINAL_STATUSES",
    "Client",
    "Event",
    "HydraError",
    "comparison_table",
    "event_line",
    "load_spec_file",
]
