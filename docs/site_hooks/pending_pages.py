"""mkdocs hook: pages that other work streams write, tolerated only while they are absent.

``PENDING`` lists pages the navigation and other pages already name but that arrive with
another branch (a provider, the GPU guide, the generated fault matrix). While such a page
is absent from ``docs/``, its nav entry is dropped and every Markdown link to it becomes
plain text, with one INFO line per page; everything else stays under ``--strict``. Once the
page exists, it is an ordinary page again: its nav entry and links are checked like any
other. Nothing here ever hides a missing page that is not in ``PENDING``.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

PENDING = frozenset({"reliability.md"})

_log = logging.getLogger("mkdocs.hooks.pending_pages")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+\.md)(#[^)\s]*)?\)")
_absent: set[str] = set()


def missing(docs_dir: str | Path) -> set[str]:
    """The pending pages not (yet) present under ``docs_dir``."""
    return {page for page in PENDING if not (Path(docs_dir) / page).is_file()}


def _prune(nav: Any) -> Any:
    if isinstance(nav, list):
        kept = [_prune(item) for item in nav]
        return [item for item in kept if item is not None]
    if isinstance(nav, dict):
        pruned = {title: _prune(value) for title, value in nav.items()}
        return {t: v for t, v in pruned.items() if v is not None} or None
    if isinstance(nav, str) and nav in _absent:
        return None
    return nav


def on_config(config: Any) -> Any:
    _absent.clear()
    _absent.update(missing(config["docs_dir"]))
    for page in sorted(_absent):
        _log.info(
            "pending page %s is not here yet: left out of the nav, links to it unlinked", page
        )
    if config["nav"] is not None:
        config["nav"] = _prune(config["nav"])
    return config


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if not _absent:
        return markdown
    here = posixpath.dirname(page.file.src_uri)

    def unlink(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join(here, match.group(2)))
        return f"{match.group(1)} (not yet in this build)" if target in _absent else match.group(0)

    return _LINK.sub(unlink, markdown)
