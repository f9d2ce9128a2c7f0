"""How every command prints: a rich table on a terminal, tab-separated plain text off one
(pipes, files, CI logs), and one JSON document with ``--json`` (stable keys, for scripts).

Commands build :class:`Table` rows of plain values; this module alone decides how they look,
so the three forms always say the same thing.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from attrs import define, field

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOTHING",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "Table",
    "help_text",
]

EXIT_OK = 0
"""Everything asked for was done (or found)."""
EXIT_FAILED = 1
"""Something could not be looked at, reached or removed; or ``doctor`` found a problem."""
EXIT_USAGE = 2
"""Bad arguments, or ``down`` refused to remove anything without ``--yes`` off a terminal."""
EXIT_NOTHING = 3
"""``offers``: no machine of any provider matches what was asked."""


@define
class Table:
    """Rows of one kind, with the columns shown in text (JSON shows every key)."""

    title: str
    columns: Sequence[tuple[str, str]]
    """(key, heading) of each column shown on a terminal or in plain text."""
    rows: list[dict[str, Any]] = field(factory=list)


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: Sphinx roles and double backticks are
    for the API pages, not a terminal."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", doc or "")
    return text.replace("``", "`")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


@define
class Output:
    """Where a command's results and notes go."""

    as_json: bool = False
    stream: TextIO = field(factory=lambda: sys.stdout)
    errors: TextIO = field(factory=lambda: sys.stderr)

    @property
    def rich(self) -> bool:
        """Tables drawn with rich: only on a terminal, and never with ``--json``."""
        return not self.as_json and self.stream.isatty() and os.environ.get("TERM") != "dumb"

    def note(self, text: str) -> None:
        """A message for the person (progress, a skipped provider): always on stderr, so
        stdout stays the results alone."""
        print(text, file=self.errors)

    def tables(self, tables: Sequence[Table], extra: Mapping[str, Any] | None = None) -> None:
        if self.as_json:
            document: dict[str, Any] = {t.title: t.rows for t in tables}
            document.update(extra or {})
            json.dump(document, self.stream, indent=2, sort_keys=True, default=str)
            self.stream.write("\n")
            return
        for table in tables:
            if table.rows:
                self._text(table)

    def _text(self, table: Table) -> None:
        if self.rich:
            from rich import box
            from rich.console import Console
            from rich.table import Table as RichTable

            title = table.title.replace("_", " ").capitalize()
            drawn = RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD)
            # On a screen, a column empty in every row (no accelerators, no spot price)
            # only takes width; scripts read the plain form, whose columns never change.
            shown = [
                (key, heading)
                for key, heading in table.columns
                if any(row.get(key) not in (None, "") for row in table.rows)
            ]
            for _, heading in shown:
                # Wrap, never cut: an instance id or a fix cut short is no use.
                drawn.add_column(heading, overflow="fold")
            for row in table.rows:
                drawn.add_row(*(_cell(row.get(key)) for key, _ in shown))
            Console(file=self.stream).print(drawn)
            return
        print(f"# {table.title}", file=self.stream)
        print("\t".join(heading for _, heading in table.columns), file=self.stream)
        for row in table.rows:
            print("\t".join(_cell(row.get(key)) for key, _ in table.columns), file=self.stream)
