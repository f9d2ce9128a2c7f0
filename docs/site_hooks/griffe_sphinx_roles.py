"""griffe extension: Sphinx roles in our docstrings become links or code on the site.

The docstrings use Sphinx's ``:class:`~skyward.errors.ConfigurationError``` so they read
well in an editor. On the site, a role naming something in ``skyward.__all__`` becomes a
cross-reference to its entry on the API page (checked by the strict build like any
other link); any other role becomes inline code. ``~`` shows only the last name, as in
Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import skyward

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)`")
_PUBLIC = frozenset(skyward.__all__)


def _replace(match: re.Match[str]) -> str:
    short, path = match.group(1) == "~", match.group(2)
    name = path.rsplit(".", 1)[-1]
    shown = name if short else path
    if path.startswith("skyward.") and name in _PUBLIC and path.count(".") <= 2:
        return f"[`{shown}`][skyward.{name}]"
    return f"`{shown}`"


def rewrite(text: str) -> str:
    return _ROLE.sub(_replace, text)


def _walk(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = rewrite(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **_: Any) -> None:
        _walk(pkg)
