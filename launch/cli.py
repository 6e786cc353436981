"""``hydra-compress``: one command for both ways of running a job.

- local, no service (``core.cli``): ``run``, ``catalogue``, ``inspect``;
- against a service (``hydra_client.cli``): ``submit``, ``wait``, ``status``, ``list``, ``report``,
  ``download``, ``cancel``.

``core`` imports no web library and ``hydra_client`` no torch, so neither can import the other; this
module is the only place they meet. The client's commands are argparse (the client installs without
typer): each is added here as a typer command that hands its arguments, ``--help`` included, to
``hydra_client.cli.main``. Without torch (a client-only machine) the core's commands are simply absent.
"""

from __future__ import annotations

import typer

from hydra_client.cli import COMMANDS
from hydra_client.cli import main as client_main

try:
    from core.cli import app
except ImportError:  # no torch here: the client's commands only
    app = typer.Typer(
        name="hydra-compress",
        help="Robust network compression with HYDRA (service client).",
        no_args_is_help=True,
        add_completion=False,
    )

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _forward(name: str) -> None:
    def forward(ctx: typer.Context) -> None:
        raise typer.Exit(client_main([name, *ctx.args], prog="hydra-compress"))

    forward.__name__ = forward.__qualname__ = name
    existing = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    if name not in existing:  # a core command of the same name wins
        app.command(name, help=next(c.help for c in COMMANDS if c.name == name), context_settings=PASS_THROUGH)(forward)


for _command in COMMANDS:
    _forward(_command.name)

if __name__ == "__main__":
    app()
