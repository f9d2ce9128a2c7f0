"""How a pool shows what it is doing: the ``display`` parameter of ``ComputePool``.

:func:`make_display` returns a callback for one of three modes:

- ``"log"``: one plain line per notable event (metrics and task events are left out: too
  noisy).
- ``"spinner"``: on a terminal, a live view (see :mod:`skyward.live_view`): a spinner with
  the current phase, then one line per node (state, bootstrap step, tasks running and
  done, CPU/memory/GPU load), progress bars for nodes getting ready and for the calls
  sent, and the cost so far; the nodes' output and errors print above it. Elsewhere
  (a pipe, a file, Jupyter) the same lines as ``"log"``.
- ``"quiet"``: nothing.

Every display is a :data:`~skyward.callbacks.Callback` with a :meth:`Display.close` (also
usable as a context manager); the pool calls ``close()`` at exit. Output goes through
``rich`` but never interprets markup in what nodes print, and writes no escape codes at all
when the console is not a terminal.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import IO, Literal, TypeAlias

from rich.console import Console
from rich.errors import LiveError
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from skyward.errors import ConfigurationError
from skyward.events import (
    BatchSubmitted,
    BootstrapCompleted,
    BootstrapProgress,
    BootstrapStarting,
    CostFinal,
    CostUpdate,
    Error,
    InfraCreated,
    InfraCreating,
    InstanceLaunching,
    InstanceProvisioned,
    InstanceStopping,
    LogLine,
    Metrics,
    PoolStopping,
    SkywardEvent,
    TaskFinished,
    TaskSubmitted,
)
from skyward.live_view import LiveView, PoolState

__all__ = [
    "Display",
    "DisplayMode",
    "LogDisplay",
    "QuietDisplay",
    "SpinnerDisplay",
    "make_display",
]

DisplayMode: TypeAlias = Literal["log", "spinner", "quiet"]
"""The values ``ComputePool(display=...)`` accepts."""

_MODES: tuple[str, ...] = ("log", "spinner", "quiet")

_ERROR_STYLE = "bold red"
_STDERR_STYLE = "yellow"
_DIM_STYLE = "dim"

# Consoles that show a spinner now: a second spinner on the same console (two pools at
# once) prints plain lines instead of fighting the first for the bottom line.
_spinning: set[int] = set()
_spinning_lock = threading.Lock()


# -- formatting ---------------------------------------------------------------------------


def _usd(amount: float) -> str:
    return f"${amount:.4f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _counts(spot: int, ondemand: int) -> str:
    return f"{spot} spot, {ondemand} on-demand"


def _cost_final_line(event: CostFinal) -> str:
    line = (
        f"cost {_usd(event.total_cost)} over {_duration(event.total_seconds)} "
        f"({_counts(event.spot_count, event.ondemand_count)})"
    )
    if event.savings_vs_ondemand > 0:
        line += f", saved {_usd(event.savings_vs_ondemand)} vs on-demand"
    return line


class _Nodes:
    """Remembers which node each instance is, to name machines the way users think of them."""

    def __init__(self) -> None:
        self._node_of: dict[str, int] = {}

    def learn(self, event: SkywardEvent) -> None:
        if isinstance(event, InstanceProvisioned):
            self._node_of[event.instance_id] = event.node

    def name(self, instance_id: str) -> str:
        node = self._node_of.get(instance_id)
        return instance_id if node is None else f"node {node} ({instance_id})"


def _log_prefix(event: LogLine) -> str:
    marker = " (stderr)" if event.stream == "stderr" else ""
    return f"[node {event.node}]{marker} "


def _describe(event: SkywardEvent, nodes: _Nodes) -> str | None:
    """The human line for ``event``, or ``None`` for events not worth a line (metrics).

    ``LogLine`` gives ``[node N] <line>`` (``[node N] (stderr) <line>`` for stderr).
    """
    name = nodes.name
    match event:
        case InfraCreating():
            return "creating infrastructure"
        case InfraCreated(region=region):
            return f"infrastructure ready in {region}"
        case InstanceLaunching(count=count, instance_type=itype, provider=provider):
            plural = "instance" if count == 1 else "instances"
            return f"launching {count} {itype} {plural} on {provider}"
        case InstanceProvisioned():
            parts = [event.instance_id]
            if event.instance_type:
                parts.append(event.instance_type)
            if event.ip:
                parts.append(f"at {event.ip}")
            parts.append("spot" if event.spot else "on-demand")
            price = event.price_spot if event.spot else event.price_on_demand
            if price is not None:
                parts.append(f"{_usd(price)}/h")
            return f"node {event.node} provisioned: " + ", ".join(parts)
        case BootstrapStarting(instance_id=iid):
            return f"{name(iid)} bootstrapping"
        case BootstrapProgress(instance_id=iid, step=step, cached=cached):
            return f"{name(iid)} bootstrap: {step}" + (" (cached)" if cached else "")
        case BootstrapCompleted(instance_id=iid):
            return f"{name(iid)} ready"
        case LogLine(line=line):
            return _log_prefix(event) + line.rstrip()
        case Error(message=message, instance_id=iid):
            where = f" on {name(iid)}" if iid is not None else ""
            return f"error{where}: {message}"
        case PoolStopping():
            return "stopping pool"
        case InstanceStopping(instance_id=iid):
            return f"stopping {name(iid)}"
        case CostUpdate():
            return (
                f"cost so far {_usd(event.accumulated_cost)} over "
                f"{_duration(event.elapsed_seconds)} at {_usd(event.hourly_rate)}/h "
                f"({_counts(event.spot_count, event.ondemand_count)})"
            )
        case CostFinal():
            return _cost_final_line(event)
        case Metrics() | BatchSubmitted() | TaskSubmitted() | TaskFinished():
            return None


def _strip_escapes(text: Text) -> Text:
    """Drop any escape character left after ANSI decoding: plain output carries none."""
    if "\x1b" in text.plain:
        return Text(text.plain.replace("\x1b", ""))
    return text


# -- displays -----------------------------------------------------------------------------


class Display:
    """Base of every display: a callback that can be closed, also as a context manager."""

    def __call__(self, event: SkywardEvent) -> SkywardEvent | None:
        return None

    def close(self) -> None:
        """Release the terminal (stop a spinner). Idempotent; the pool calls it at exit."""

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class QuietDisplay(Display):
    """Prints nothing."""


class LogDisplay(Display):
    """One plain line per notable event; styled only when the console is a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._nodes = _Nodes()
        self._lock = threading.Lock()

    def __call__(self, event: SkywardEvent) -> SkywardEvent | None:
        with self._lock:
            self._nodes.learn(event)
            text = self._render(event)
        if text is not None:
            self._print(text)
        return None

    def _render(self, event: SkywardEvent) -> Text | None:
        line = _describe(event, self._nodes)
        if line is None:
            return None
        styled = self.console.is_terminal
        if isinstance(event, LogLine):
            prefix = _log_prefix(event)
            # A node's output may carry its own colours: keep them on a terminal, drop them
            # elsewhere. Never parse it as rich markup.
            body = Text.from_ansi(event.line.rstrip(), end="")
            if event.stream == "stderr" and styled:
                prefix_text = Text(prefix, style=_STDERR_STYLE)
            else:
                prefix_text = Text(prefix, style=_DIM_STYLE if styled else "")
            text = Text.assemble(prefix_text, body)
            return text if styled else _strip_escapes(text)
        if isinstance(event, Error) and styled:
            return Text(line, style=_ERROR_STYLE)
        return _strip_escapes(Text(line)) if not styled else Text(line)

    def _print(self, text: Text) -> None:
        # soft_wrap: never break a long line at the console width.
        self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


class SpinnerDisplay(LogDisplay):
    """A live view of the pool, with node output and errors printed above it.

    Only for terminals: :func:`make_display` gives a :class:`LogDisplay` otherwise. The
    view starts at the first event and goes away on ``CostFinal`` or :meth:`close`,
    whichever comes first, leaving one line with the task totals; events after that print
    as plain lines.
    """

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._spinner = Spinner("dots", text=Text("starting"), style="cyan")
        self.state = PoolState()
        self._view = LiveView(self.state, self._spinner)
        self._live: Live | None = None
        self._closed = False
        self._phase = "starting"
        self._expected = 0
        self._provisioned: set[str] = set()
        self._bootstrapping: set[str] = set()
        self._ready: set[str] = set()
        self._steps: dict[str, str] = {}
        self._metrics: dict[int, Metrics] = {}
        self._cost: CostUpdate | None = None

    # -- events ---------------------------------------------------------------------------

    def __call__(self, event: SkywardEvent) -> SkywardEvent | None:
        above: Text | None = None
        with self._lock:
            self._nodes.learn(event)
            if self._closed:
                above = self._render(event)
            else:
                self._start()
                self._advance(event)
                self.state.follow(event)
                if self._closed or isinstance(event, LogLine | Error | CostFinal):
                    above = self._render(event)
                self._spinner.update(text=Text(self._status()))
        if isinstance(event, CostFinal):
            self.close()
        if above is not None:
            self._print(above)
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            finally:
                with _spinning_lock:
                    _spinning.discard(id(self.console))
            with self.state.lock:
                _, done, failed = self.state.tasks()
            if done or failed:
                summary = f"{done + failed} calls finished" + (
                    f", {failed} failed" if failed else ""
                )
                self._print(Text(summary, style=_DIM_STYLE))

    @property
    def running(self) -> bool:
        """Whether the spinner is on screen."""
        return self._live is not None

    # -- state ----------------------------------------------------------------------------

    def _advance(self, event: SkywardEvent) -> None:
        match event:
            case InfraCreating():
                self._phase = "creating infrastructure"
            case InfraCreated(region=region):
                self._phase = f"infrastructure ready in {region}"
            case InstanceLaunching(count=count, instance_type=itype, provider=provider):
                self._expected += count
                self._phase = f"launching {count} {itype} on {provider}"
            case InstanceProvisioned(instance_id=iid):
                self._provisioned.add(iid)
                total = max(self._expected, len(self._provisioned))
                self._phase = f"provisioned {len(self._provisioned)}/{total} nodes"
            case BootstrapStarting(instance_id=iid):
                self._bootstrapping.add(iid)
                self._phase = "bootstrapping"
            case BootstrapProgress(instance_id=iid, step=step):
                self._bootstrapping.add(iid)
                self._steps[iid] = step
                self._phase = "bootstrapping"
            case BootstrapCompleted(instance_id=iid):
                self._ready.add(iid)
                self._steps.pop(iid, None)
                total = self._node_total()
                self._phase = "bootstrapping" if len(self._ready) < total else "running"
            case Metrics(node=node):
                self._metrics[node] = event
            case CostUpdate():
                self._cost = event
            case PoolStopping():
                self._phase = "stopping pool"
            case InstanceStopping(instance_id=iid):
                self._phase = f"stopping {self._nodes.name(iid)}"
            case _:
                pass

    def _node_total(self) -> int:
        return max(self._expected, len(self._provisioned), len(self._bootstrapping))

    def _status(self) -> str:
        parts = [self._phase]
        total = self._node_total()
        if self._phase == "bootstrapping":
            parts = [f"bootstrapping {len(self._ready)}/{total} nodes"]
            steps = sorted(set(self._steps.values()))
            if steps:
                parts.append(", ".join(steps))
        elif self._phase == "running":
            parts = [f"running on {total} node" + ("" if total == 1 else "s")]
        if self._metrics and self._phase == "running":
            parts.append(self._metrics_summary())
        if self._cost is not None:
            parts.append(f"{_usd(self._cost.accumulated_cost)} so far")
        return " | ".join(parts)

    def _metrics_summary(self) -> str:
        samples = list(self._metrics.values())
        cpu = sum(m.cpu_percent for m in samples) / len(samples)
        mem = sum(m.memory_percent for m in samples) / len(samples)
        summary = f"cpu {cpu:.0f}% mem {mem:.0f}%"
        gpus = [m.gpu_utilization for m in samples if m.gpu_utilization is not None]
        if gpus:
            summary += f" gpu {sum(gpus) / len(gpus):.0f}%"
        return summary

    # -- terminal -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._live is not None:
            return
        # Route the process's own prints above the spinner only when they would have gone
        # to the same terminal anyway; never move a redirected stdout onto the terminal.
        on_tty = _isatty(self.console.file)
        live = Live(
            self._view,
            console=self.console,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=on_tty and _isatty(sys.stdout),
            redirect_stderr=on_tty and _isatty(sys.stderr),
        )
        with _spinning_lock:
            if id(self.console) in _spinning:
                self._closed = True
                return
            _spinning.add(id(self.console))
        try:
            live.start()
        except BaseException as exc:
            with _spinning_lock:
                _spinning.discard(id(self.console))
            if not isinstance(exc, LiveError):
                raise
            # Another live display owns this console (older rich): plain lines instead.
            self._closed = True
            return
        self._live = live


def _isatty(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_display(mode: DisplayMode, *, console: Console | None = None) -> Display:
    """The display callback for ``mode``: ``"log"``, ``"spinner"`` or ``"quiet"``.

    :param console: where to write; ``Console(stderr=True)`` by default.
    :raises ConfigurationError: for any other mode.
    """
    if mode not in _MODES:
        raise ConfigurationError(
            "display", f"unknown display mode {mode!r}", 'Use "log", "spinner" or "quiet"'
        )
    if mode == "quiet":
        return QuietDisplay()
    console = console if console is not None else Console(stderr=True)
    if mode == "spinner" and console.is_terminal and not console.is_dumb_terminal:
        return SpinnerDisplay(console)
    return LogDisplay(console)
