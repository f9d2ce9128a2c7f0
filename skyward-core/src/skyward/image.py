"""What a node runs: the declarative :class:`Image` and the bootstrap script built from it.

An :class:`Image` names a Python version, pip packages, apt packages and environment
variables. :meth:`Image.content_hash` identifies what gets built (the venv directory, cached
snapshots); :meth:`Image.bootstrap` renders the idempotent POSIX ``sh`` script that builds it
on a node, streaming progress as marker lines:

- ``::skyward:step <name>`` when a step starts (every step prints it, cached or not);
- ``::skyward:cached <name>`` right after, when the step is skipped because its work is done;
- ``::skyward:python <path>`` as the last line: the interpreter the node agent runs under.

Built-in steps run in this order: ``uv``, ``apt`` (only when apt packages are asked for),
``deps``, ``skyward`` (only when ``$SKYWARD_WHEELS`` is a directory), ``server``. Plugin
:class:`BootstrapStep` objects run after the built-in step their ``after`` names.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from attrs import Attribute, field, frozen

from skyward.errors import ConfigurationError

__all__ = ["BUILTIN_STEPS", "PLUGIN_STEP_ANCHORS", "BootstrapStep", "Image"]

BUILTIN_STEPS: tuple[str, ...] = ("uv", "apt", "deps", "skyward", "server")
"""Names of the built-in bootstrap steps, in the order they run."""

PLUGIN_STEP_ANCHORS: tuple[str, ...] = ("uv", "apt", "deps", "skyward")
"""Built-in steps a :class:`BootstrapStep` may run after (its ``after``)."""

_HASH_SCHEME = "skyward.image/1"
"""Version tag inside the hashed document; bump it when the serialization changes."""

_MIN_PYTHON = (3, 11)
# Used with fullmatch: "$" alone would accept a trailing newline ("ffmpeg\n").
_PYTHON_RE = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_APT_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+)?")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STEP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _client_python() -> str:
    """The running interpreter's ``major.minor``: what cloudpickle needs on both ends."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- converters


def _python_minor(value: str) -> str:
    """Normalize ``"3.11.7"`` to ``"3.11"``; anything else is left for the validator."""
    if isinstance(value, str):
        match = _PYTHON_RE.fullmatch(value.strip())
        if match:
            return f"{int(match.group(1))}.{int(match.group(2))}"
    return value


def _str_tuple(value: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise ConfigurationError(
            name,
            f"expected a list of strings, got the single string {value!r}",
            f"wrap it in a list: {name.removeprefix('image.')}=[{value!r}]",
        )
    try:
        return tuple(value)
    except TypeError:
        raise ConfigurationError(
            name,
            f"expected a list of strings, got {type(value).__name__}",
            'pass a list such as ["numpy", "pandas"]',
        ) from None


def _pip_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return _str_tuple(value, "image.pip")


def _apt_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return _str_tuple(value, "image.apt")


def _frozen_env(value: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so the image stays immutable even if the caller's dict changes."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "image.env",
            f"expected a mapping of names to strings, got {type(value).__name__}",
            'pass a dict such as {"HF_HOME": "/data/hf"}',
        )
    return types.MappingProxyType(dict(value))


def _env_key(value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What equality and ``hash()`` compare: the sorted items (a mappingproxy is unhashable)."""
    return tuple(sorted(value.items()))


def _env_repr(value: Mapping[str, str]) -> str:
    """Show the names only: values may be secrets and reprs end up in logs."""
    return "{" + ", ".join(f"{key!r}: '***'" for key in sorted(value)) + "}"


# --------------------------------------------------------------------------- validators


def _check_python(_: Any, __: Attribute[str], value: str) -> None:
    match = _PYTHON_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigurationError(
            "image.python",
            f"{value!r} is not a Python version",
            f'use "major.minor", for example python="{_client_python()}"',
        )
    if (int(match.group(1)), int(match.group(2))) < _MIN_PYTHON:
        raise ConfigurationError(
            "image.python",
            f"Python {value} is older than Skyward supports",
            f'use Python 3.11 or newer, ideally your own: python="{_client_python()}"',
        )


def _check_pip(_: Any, __: Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for entry in value:
        if not isinstance(entry, str):
            raise ConfigurationError(
                "image.pip",
                f"entry {entry!r} is a {type(entry).__name__}, not a string",
                'give requirement strings such as "numpy>=1.26"',
            )
        if not entry.strip():
            raise ConfigurationError(
                "image.pip", "an entry is empty", "remove the empty string from the list"
            )
        if _CONTROL_RE.search(entry):
            raise ConfigurationError(
                "image.pip",
                f"entry {entry!r} contains a control character (newline, NUL, ...)",
                "give one requirement per list entry, on a single line",
            )
        if entry != entry.strip():
            raise ConfigurationError(
                "image.pip",
                f"entry {entry!r} has leading or trailing whitespace",
                "remove the surrounding spaces",
            )
        if entry.startswith("-"):
            raise ConfigurationError(
                "image.pip",
                f"entry {entry!r} looks like an installer option, not a requirement",
                "list only requirements; use pip_extra_index_url for an extra index",
            )


def _check_index_url(_: Any, __: Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    fix = 'give a full http(s) URL, e.g. "https://download.pytorch.org/whl/cu121"'
    if not isinstance(value, str) or _CONTROL_RE.search(value) or " " in value:
        raise ConfigurationError("image.pip_extra_index_url", f"{value!r} is not a valid URL", fix)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            "image.pip_extra_index_url", f"{value!r} is not an http(s) URL", fix
        )


def _check_apt(_: Any, __: Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for entry in value:
        if not isinstance(entry, str) or not _APT_RE.fullmatch(entry):
            raise ConfigurationError(
                "image.apt",
                f"{entry!r} is not a Debian package name",
                'use lowercase names like "ffmpeg" or "libgl1", optionally "name=version"',
            )


def _check_env(_: Any, __: Attribute[Mapping[str, str]], value: Mapping[str, str]) -> None:
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
            raise ConfigurationError(
                "image.env",
                f"{key!r} is not a valid environment variable name",
                "use letters, digits and underscores, not starting with a digit",
            )
        if not isinstance(val, str):
            raise ConfigurationError(
                "image.env",
                f"the value of {key} is a {type(val).__name__}, not a string",
                f"convert it yourself, e.g. env={{{key!r}: str(value)}}",
            )
        if "\x00" in val:
            raise ConfigurationError(
                "image.env",
                f"the value of {key} contains a NUL character",
                "remove the NUL; environment values cannot hold it",
            )
        if len(key) > 256 or len(val) > 127 * 1024:
            raise ConfigurationError(
                "image.env",
                f"{key[:40]!r} or its value is too long for an environment variable",
                "keep names under 256 characters and values under 127 KiB",
            )


def _check_step_name(_: Any, __: Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _STEP_NAME_RE.fullmatch(value):
        raise ConfigurationError(
            "BootstrapStep.name",
            f"{value!r} is not a valid step name",
            'use a short word of letters, digits, "_", "." or "-", e.g. "volumes"',
        )
    if value in BUILTIN_STEPS or value == "self-destruct":
        raise ConfigurationError(
            "BootstrapStep.name",
            f"{value!r} is the name of a built-in step",
            "pick another name for the plugin's step",
        )


def _check_step_script(_: Any, __: Attribute[str], value: str) -> None:
    if not isinstance(value, str) or "\x00" in value:
        raise ConfigurationError(
            "BootstrapStep.script",
            "the script must be a string without NUL characters",
            "pass the POSIX sh fragment as text",
        )


def _check_step_after(_: Any, __: Attribute[str], value: str) -> None:
    if value not in PLUGIN_STEP_ANCHORS:
        raise ConfigurationError(
            "BootstrapStep.after",
            f"{value!r} is not a built-in step a plugin step can follow",
            f"use one of {', '.join(repr(s) for s in PLUGIN_STEP_ANCHORS)}",
        )


# --------------------------------------------------------------------------- data


@frozen
class BootstrapStep:
    """A piece of node setup a plugin contributes (mount volumes, install drivers, ...).

    The script runs in a subshell of the bootstrap with ``set -eu`` in force, so a failing
    command fails the bootstrap, and ``cd``, variables or ``exit`` do not leak out. It sees
    ``SKYWARD_HOME``, ``SKYWARD_IMAGE_HASH``, ``SKYWARD_VENV``, ``SKYWARD_PYTHON`` (exists
    from step ``deps`` on) and ``SKYWARD_UV`` in its environment. It may print
    ``::skyward:cached <name>`` itself when it finds its work already done.
    """

    name: str = field(validator=_check_step_name)
    """Short name shown in progress events (``"volumes"``); not a built-in step's name."""
    script: str = field(validator=_check_step_script)
    """POSIX ``sh`` fragment. Must be idempotent: the bootstrap runs again on a warm node."""
    after: str = field(default="deps", validator=_check_step_after)
    """Built-in step it runs after: ``"uv"``, ``"apt"``, ``"deps"`` or ``"skyward"``."""


@frozen
class Image:
    """Declarative environment of the nodes of a pool.

    >>> Image(pip=["numpy"], apt=["ffmpeg"], env={"OMP_NUM_THREADS": "4"})  # doctest: +SKIP

    Every value is checked at construction; a bad one raises
    :class:`~skyward.errors.ConfigurationError` naming the field (``"image.pip"``, ...).
    """

    python: str = field(factory=_client_python, converter=_python_minor, validator=_check_python)
    """Python ``major.minor`` of the node's venv; defaults to the client's own, since
    cloudpickle needs both ends on the same minor. ``"3.11.7"`` is accepted and normalized to
    ``"3.11"``: the patch level never has to match, and pinning it would make nodes fail
    where only another patch release is at hand."""
    pip: tuple[str, ...] = field(default=(), converter=_pip_tuple, validator=_check_pip)
    """Requirements installed with ``uv pip install`` (``"torch==2.4.*"``, ``"pkg[extra]"``),
    each passed as one argument. Order is kept, and is part of the content hash."""
    pip_extra_index_url: str | None = field(default=None, validator=_check_index_url)
    """An extra http(s) package index, passed as ``--extra-index-url``."""
    apt: tuple[str, ...] = field(default=(), converter=_apt_tuple, validator=_check_apt)
    """Debian packages (``"ffmpeg"``, ``"libgl1=1.7.0-1"``), installed as root or through
    passwordless sudo. Order does not matter."""
    env: Mapping[str, str] = field(
        factory=dict,
        converter=_frozen_env,
        validator=_check_env,
        eq=_env_key,
        repr=_env_repr,
    )
    """Environment variables of the remote tasks. Stored read-only; compared by equality but
    kept out of :meth:`content_hash`, the bootstrap script and the repr's values, as it may
    hold secrets and changes nothing that gets built."""

    def content_hash(self) -> str:
        """12 lowercase hex characters identifying what this image builds.

        SHA-256 of canonical JSON (sorted keys, a scheme tag) of ``python``, ``pip`` in the
        given order (resolvers may care), ``pip_extra_index_url`` and ``apt`` sorted and
        deduplicated (apt does not care). ``env`` is left out. Stable across processes,
        machines and ``PYTHONHASHSEED``.
        """
        document = {
            "scheme": _HASH_SCHEME,
            "python": self.python,
            "pip": list(self.pip),
            "pip_extra_index_url": self.pip_extra_index_url,
            "apt": sorted(set(self.apt)),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]

    @property
    def is_empty(self) -> bool:
        """True when the image adds nothing to the client's interpreter, so it can reuse it."""
        return (
            not self.pip
            and not self.apt
            and self.pip_extra_index_url is None
            and self.python == _client_python()
        )

    def bootstrap(self, ttl: int = 0, steps: Sequence[BootstrapStep] = ()) -> str:
        """Render the idempotent POSIX ``sh`` script that prepares a Linux node for this image.

        :param ttl: seconds until the node powers itself off; ``0`` for no timer. The timer
            starts once per boot (marker ``$SKYWARD_HOME/run/self-destruct`` holds the boot
            id), detached from the SSH session. ``$SKYWARD_POWEROFF_CMD`` replaces the
            power-off command (``shutdown -h now``, through ``sudo -n`` when not root,
            ``poweroff`` as fallback).
        :param steps: plugin steps, each run after the built-in step its ``after`` names, in
            the given order.
        :returns: the script. It reads ``$SKYWARD_HOME`` (default ``$HOME/.skyward``) and
            ``$SKYWARD_WHEELS`` from its environment, serializes concurrent runs with a lock
            directory, and never contains ``env`` values.
        :raises ConfigurationError: on a negative ``ttl`` or duplicate step names.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            raise ConfigurationError(
                "ttl", f"{ttl!r} is not a number of seconds", "use an int >= 0 (0 disables it)"
            )
        steps = tuple(steps)
        for step in steps:
            if not isinstance(step, BootstrapStep):
                raise ConfigurationError(
                    "steps", f"{step!r} is not a BootstrapStep", "pass BootstrapStep objects"
                )
        names = [step.name for step in steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigurationError(
                "steps",
                f"step names {', '.join(duplicates)} are used more than once",
                "give each plugin step its own name",
            )

        digest = self.content_hash()
        parts = [_PRELUDE.replace("@HASH@", shlex.quote(digest))]
        if ttl > 0:
            parts.append(_SELF_DESTRUCT.replace("@TTL@", shlex.quote(str(ttl))))
        parts.append(_STEP_UV)
        parts.extend(_plugin_steps(steps, "uv"))
        if self.apt:
            packages = " ".join(shlex.quote(p) for p in sorted(set(self.apt)))
            parts.append(_STEP_APT.replace("@PACKAGES@", packages))
        parts.extend(_plugin_steps(steps, "apt"))
        parts.append(self._deps_step())
        parts.extend(_plugin_steps(steps, "deps"))
        parts.append(_STEP_SKYWARD)
        parts.extend(_plugin_steps(steps, "skyward"))
        parts.append(_STEP_SERVER)
        return "\n".join(part.strip("\n") + "\n" for part in parts)

    def _deps_step(self) -> str:
        install = ""
        if self.pip:
            args = ['"$SKYWARD_UV" pip install --python "$SKYWARD_PYTHON"']
            if self.pip_extra_index_url is not None:
                args.append(f"--extra-index-url {shlex.quote(self.pip_extra_index_url)}")
            args.extend(shlex.quote(p) for p in self.pip)
            install = "  " + " \\\n    ".join(args)
        else:
            install = "  : # no pip packages"
        return _STEP_DEPS.replace("@PYTHON@", shlex.quote(self.python)).replace(
            "@INSTALL@", install
        )


def _plugin_steps(steps: tuple[BootstrapStep, ...], after: str) -> list[str]:
    return [
        f"# plugin step {step.name} (after {after})\n"
        f"_sky_say step {shlex.quote(step.name)}\n"
        f"(\n:\n{step.script.rstrip()}\n)\n"
        for step in steps
        if step.after == after
    ]


# --------------------------------------------------------------------------- script parts
# Placeholders (@NAME@) are replaced with shlex-quoted values; nothing else is interpolated.

_PRELUDE = r"""
#!/bin/sh
# Skyward node bootstrap (generated). Idempotent: running it again skips finished work.
set -eu

SKYWARD_HOME="${SKYWARD_HOME:-${HOME:?HOME is not set; set SKYWARD_HOME}/.skyward}"
mkdir -p "$SKYWARD_HOME/envs" "$SKYWARD_HOME/run"
SKYWARD_HOME=$(cd "$SKYWARD_HOME" && pwd -P)
if [ -n "${SKYWARD_WHEELS:-}" ] && [ -d "$SKYWARD_WHEELS" ]; then
  SKYWARD_WHEELS=$(cd "$SKYWARD_WHEELS" && pwd -P)
fi
cd "$SKYWARD_HOME"  # keep uv away from any project or config around the caller's directory
SKYWARD_IMAGE_HASH=@HASH@
SKYWARD_VENV="$SKYWARD_HOME/envs/$SKYWARD_IMAGE_HASH"
SKYWARD_PYTHON="$SKYWARD_VENV/bin/python"
UV_NO_PROJECT=1
# Trust the machine's own certificate store, where organisations install their CAs.
UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"
export SKYWARD_HOME SKYWARD_IMAGE_HASH SKYWARD_VENV SKYWARD_PYTHON UV_NO_PROJECT UV_SYSTEM_CERTS

_sky_say() { printf '::skyward:%s %s\n' "$1" "$2"; }
_sky_fail() { printf 'skyward: %s\n' "$1" >&2; exit 1; }

# One bootstrap at a time per SKYWARD_HOME; a lock left by a dead process is taken over.
_sky_lock="$SKYWARD_HOME/run/bootstrap.lock"
while ! mkdir "$_sky_lock" 2>/dev/null; do
  _sky_holder=$(cat "$_sky_lock/pid" 2>/dev/null || true)
  if [ -n "$_sky_holder" ] && ! kill -0 "$_sky_holder" 2>/dev/null; then
    rm -rf "$_sky_lock"
    continue
  fi
  sleep 1
done
trap 'rm -rf "$_sky_lock"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
echo "$$" > "$_sky_lock/pid"
"""

_SELF_DESTRUCT = r"""
# Self-destruct timer: once per boot, detached from this session.
_sky_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
_sky_ttl_marker="$SKYWARD_HOME/run/self-destruct"
if [ ! -f "$_sky_ttl_marker" ] || [ "$(cat "$_sky_ttl_marker")" != "$_sky_boot" ]; then
  if [ -n "${SKYWARD_POWEROFF_CMD:-}" ]; then
    _sky_off=$SKYWARD_POWEROFF_CMD
  elif [ "$(id -u)" = 0 ]; then
    _sky_off='shutdown -h now || poweroff'
  else
    _sky_off='sudo -n shutdown -h now || sudo -n poweroff'
  fi
  _sky_detach=
  if command -v setsid >/dev/null 2>&1; then _sky_detach=setsid; fi
  nohup $_sky_detach sh -c 'sleep "$1"; eval "$2"' skyward-self-destruct @TTL@ "$_sky_off" \
    </dev/null >/dev/null 2>&1 &
  printf '%s\n' "$_sky_boot" > "$_sky_ttl_marker"
fi
"""

_STEP_UV = r"""
# step uv: find uv, or install it with pip; nothing from the internet is piped to sh.
_sky_say step uv
SKYWARD_UV=
for _sky_c in "$SKYWARD_HOME/bin/uv" "$(command -v uv 2>/dev/null || true)" \
    "$SKYWARD_HOME/tools/bin/uv" "${HOME:-/nonexistent}/.local/bin/uv"; do
  if [ -n "$_sky_c" ] && [ -f "$_sky_c" ] && [ -x "$_sky_c" ]; then
    SKYWARD_UV=$_sky_c
    break
  fi
done
if [ -n "$SKYWARD_UV" ]; then
  _sky_say cached uv
else
  command -v python3 >/dev/null 2>&1 \
    || _sky_fail "uv is missing and so is python3; put a uv binary at $SKYWARD_HOME/bin/uv"
  if python3 -m venv "$SKYWARD_HOME/tools" \
      && "$SKYWARD_HOME/tools/bin/python" -m pip install --quiet uv; then
    SKYWARD_UV="$SKYWARD_HOME/tools/bin/uv"
  else
    rm -rf "$SKYWARD_HOME/tools"
    if python3 -m pip install --quiet --user uv \
        || python3 -m pip install --quiet --user --break-system-packages uv; then
      SKYWARD_UV="$(python3 -m site --user-base)/bin/uv"
    fi
  fi
  [ -n "$SKYWARD_UV" ] && [ -x "$SKYWARD_UV" ] \
    || _sky_fail "could not install uv with pip; put a uv binary at $SKYWARD_HOME/bin/uv"
fi
export SKYWARD_UV
"""

_STEP_APT = r"""
# step apt: as root, or through passwordless sudo.
_sky_say step apt
_sky_apt_marker="$SKYWARD_HOME/run/apt-$SKYWARD_IMAGE_HASH.ok"
if [ -f "$_sky_apt_marker" ]; then
  _sky_say cached apt
else
  if [ "$(id -u)" = 0 ]; then
    _sky_sudo=
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    _sky_sudo='sudo -n'
  else
    _sky_fail "apt packages requested but neither root nor passwordless sudo"
  fi
  command -v apt-get >/dev/null 2>&1 \
    || _sky_fail "apt packages requested but this node has no apt-get"
  $_sky_sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 update
  $_sky_sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y @PACKAGES@
  : > "$_sky_apt_marker"
fi
"""

_STEP_DEPS = r"""
# step deps: the image's venv, keyed by its content hash.
_sky_say step deps
if [ -f "$SKYWARD_VENV/.skyward-deps-ok" ]; then
  _sky_say cached deps
else
  if [ ! -x "$SKYWARD_PYTHON" ]; then
    rm -rf "$SKYWARD_VENV"
    "$SKYWARD_UV" venv --python @PYTHON@ "$SKYWARD_VENV"
  fi
@INSTALL@
  : > "$SKYWARD_VENV/.skyward-deps-ok"
fi
"""

_STEP_SKYWARD = r"""
# step skyward: the client's own distributions, uploaded as wheels (installed without
# resolving: they are the client's exact closure); compiled ones are pinned in
# requirements.txt to the client's versions and come from the index.
if [ -n "${SKYWARD_WHEELS:-}" ] && [ -d "$SKYWARD_WHEELS" ]; then
  _sky_say step skyward
  set --
  for _sky_w in "$SKYWARD_WHEELS"/*.whl; do
    [ -e "$_sky_w" ] || continue
    _sky_n=${_sky_w##*/}
    set -- "$@" --reinstall-package "${_sky_n%%-*}" "$_sky_w"
  done
  [ "$#" -gt 0 ] || _sky_fail "SKYWARD_WHEELS=$SKYWARD_WHEELS holds no .whl files"
  _sky_stamp=$(cd "$SKYWARD_WHEELS" && cksum ./*.whl ./requirements.txt 2>/dev/null || true)
  _sky_wheels_marker="$SKYWARD_VENV/.skyward-wheels-ok"
  if [ -f "$_sky_wheels_marker" ] && [ "$(cat "$_sky_wheels_marker")" = "$_sky_stamp" ]; then
    _sky_say cached skyward
  else
    if [ -s "$SKYWARD_WHEELS/requirements.txt" ]; then
      "$SKYWARD_UV" pip install --python "$SKYWARD_PYTHON" -r "$SKYWARD_WHEELS/requirements.txt"
    fi
    "$SKYWARD_UV" pip install --python "$SKYWARD_PYTHON" --no-index --no-deps \
      --find-links "$SKYWARD_WHEELS" "$@"
    printf '%s\n' "$_sky_stamp" > "$_sky_wheels_marker"
  fi
fi
"""

_STEP_SERVER = r"""
# step server: tell the caller which interpreter runs the node agent.
_sky_say step server
printf '::skyward:python %s\n' "$SKYWARD_PYTHON"
"""
