"""``hydra-compress``: one command for both ways of running a job.

- local, no service (``core.cli``): ``run``, ``catalogue``, ``inspect``;
- against a service (``hydra_client.cli``): ``submit``, ``wait``, ``status``, ``list``, ``report``,
  ``download``, ``cancel``.

``core`` imports no web library and ``hydra_client`` no torch, so neither can import the other; this
module is the only place they meet. Without torch (a client-only machine) the core's commands are
simply absent.
"""

from __future__ import annotations

import typer

from hydra_client.cli import register

try:
    from core.cli import app
except ImportError:  # no torch here: the client's commands only
    app = typer.Typer(
        name="hydra-compress",
        help="Robust network compression with HYDRA (service client).",
        no_args_is_help=True,
        add_completion=False,
    )

register(app)

if __name__ == "__main__":
    app()
