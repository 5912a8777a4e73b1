"""How the CLI shows answers: rich tables for people, raw JSON (``--json``) for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

out = Console(soft_wrap=False)
"""What a command answers (stdout)."""

err = Console(stderr=True, soft_wrap=True)
"""Why a command failed, and progress (stderr)."""

JsonFlag = Annotated[bool, typer.Option("--json", help="print the service's raw JSON answer, for scripts")]
"""The ``--json`` option every listing and action takes."""

ExerciseFlag = Annotated[
    bool | None,
    typer.Option("--exercise/--live", help="only exercise objects, or only live ones (default: both)"),
]
"""``--exercise`` or ``--live``: the drill flag as a filter."""

LEVEL_STYLE = {1: "bold red", 2: "bold dark_orange", 3: "bold yellow", 4: "bold blue"}
LEVEL_NAME = {1: "I", 2: "II", 3: "III", 4: "IV"}


def print_json(data: Any) -> None:
    """The answer as the service sent it: indented JSON, non-ASCII kept."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def level(value: Any) -> Text:
    """A level as operators say it (``II``), in its warning colour."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return Text(str(value or "-"))
    return Text(LEVEL_NAME.get(number, str(value)), style=LEVEL_STYLE.get(number, ""))


def cell(value: Any) -> str | Text:
    """A table cell: text as is, nothing as ``-``, flags as yes/no, times to the second."""
    if isinstance(value, Text):
        return value
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and _is_time(value):
        return value[5:16].replace("T", " ")  # as month-day hour:minute, in the service's UTC
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_time(value: str) -> bool:
    if not (19 <= len(value) <= 32 and value[10:11] == "T"):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table of ``columns`` with one row per item; the first column (an id) is never folded."""
    t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for n, name in enumerate(columns):
        t.add_column(name, overflow="fold", no_wrap=n == 0, min_width=len(name))
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def count(n: int, noun: str) -> str:
    """``1 incident``, ``3 incidents``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def facts(title: str | None, pairs: Iterable[tuple[str, Any]]) -> Table:
    """One object as a two-column table of its facts."""
    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for name, value in pairs:
        t.add_row(name, cell(value))
    return t


def show(*renderables: Any) -> None:
    """Print tables (or text) on stdout, one after the other."""
    for r in renderables:
        out.print(r)


def more(next_cursor: Any) -> None:
    """Say on stderr that the listing has more pages than shown."""
    if next_cursor:
        err.print("[dim]more on the next page: raise --limit, or use --json for the cursor[/dim]")
