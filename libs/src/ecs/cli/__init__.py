"""``ecs``: the operators' command-line tool (entry point ``ecs = "ecs.cli:app"``).

One module per job: ``access`` (token, sign, login, logout, whoami), ``incidents``,
``resources`` (units, assign, stock, reserve, shelters), ``alerts``, ``watch``; ``client`` makes
the HTTP calls and tells refusals in plain words, ``output`` draws the tables, ``config`` finds
the token, the services' URLs and the embedded default's files.
"""

from __future__ import annotations

import typer

from ..drill import cli as drill_cli
from . import access, alerts, incidents, resources, watch

app = typer.Typer(
    help="Emergency command system: the operators' tool. Start with 'ecs login', then e.g. 'ecs incidents list'.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
)

app.command()(access.login)
app.command()(access.logout)
app.command()(access.whoami)
app.command()(access.token)
app.command()(access.sign)

app.add_typer(incidents.app, name="incidents")
app.add_typer(resources.units, name="units")
app.command()(resources.assign)
app.add_typer(resources.stock, name="stock")
app.command()(resources.reserve)
app.add_typer(resources.shelters, name="shelters")
app.add_typer(alerts.app, name="alerts")
app.command()(watch.watch)

# More command groups register here, one line each.
app.add_typer(drill_cli.app, name="drill")

__all__ = ["app"]


if __name__ == "__main__":
    app()
