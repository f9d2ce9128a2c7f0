"""What the ``"spinner"`` display draws below the output: the pool's live view.

:class:`PoolState` follows the events of one pool (nodes and their state, bootstrap
steps, calls in flight and done per node, the latest load sample per node, prices) and
:class:`LiveView` draws it at whatever width the terminal has, every time rich refreshes
the screen, so elapsed time and cost tick on their own between events::

    ⠧ running on 2 nodes | cpu 11% mem 4% | $0.0123 so far
      node 0   ready                    2 in flight    14 done             cpu  14%  mem   4%
      node 1   bootstrap: deps          0 in flight     0 done             cpu   8%  mem   4%
      tasks   ███████████████░░░░░░░░░  14/16 done, 2 in flight
      cost    $0.0123 so far at $1.2000/h, 1m02s

"In flight" counts calls sent to a node and not answered yet: running, or queued on the
node behind its workers (a node accepts four calls per worker ahead).

Where the table does not fit (under 60 columns, or fewer than its lines need) each node
gets a compact line under a legend; every line is cut to the width with an
ellipsis, never wrapped, so the view keeps its height. Nothing here relies on colour:
progress bars use distinct characters for done and to-do, so ``NO_COLOR`` loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from attrs import define, field
from rich.console import Console, ConsoleOptions, RenderableType
from rich.spinner import Spinner
from rich.text import Text

from skyward.events import (
    BatchSubmitted,
    BootstrapCompleted,
    BootstrapProgress,
    BootstrapStarting,
    CostUpdate,
    Error,
    InstanceLaunching,
    InstanceProvisioned,
    InstanceStopping,
    Metrics,
    SkywardEvent,
    TaskFinished,
    TaskSubmitted,
)

__all__ = ["LiveView", "NodeState", "PoolState"]

COMPACT_BELOW = 60
"""Terminal width under which each node gets a compact line (also used wherever the
table's lines would not fit)."""
MAX_NODE_ROWS = 8
"""Nodes shown one per line; the rest are summed up in one line."""


@define
class NodeState:
    """One node as the live view shows it."""

    node: int
    instance_id: str = ""
    state: str = "provisioned"
    running: int = 0
    done: int = 0
    failed: int = 0
    metrics: Metrics | None = None
    price: float | None = None
    """USD per hour, from the provisioning event (spot or on-demand as launched)."""
    since: float = 0.0
    """``time.monotonic()`` when it was provisioned."""
    stopped: float | None = None


@define
class PoolState:
    """Everything the live view draws, kept up to date by :meth:`follow`."""

    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    expected: int = 0
    nodes: dict[int, NodeState] = field(factory=dict)
    node_of: dict[str, int] = field(factory=dict)
    cost: CostUpdate | None = None
    announced: int = 0
    """Calls of batches announced by ``BatchSubmitted`` and not sent yet."""
    lock: threading.RLock = field(factory=threading.RLock)
    """Held while events change the state and while the view reads it: events arrive on
    the nodes' reader threads, the view is drawn on rich's refresh thread."""

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def follow(self, event: SkywardEvent) -> None:
        with self.lock:
            self._follow(event)

    def _follow(self, event: SkywardEvent) -> None:
        match event:
            case InstanceLaunching(count=count):
                self.expected += count
            case InstanceProvisioned(instance_id=iid, node=node):
                price = event.price_spot if event.spot else event.price_on_demand
                state = self._node(node)
                state.instance_id, state.price, state.since = iid, price, self.clock()
                self.node_of[iid] = node
            case BootstrapStarting(instance_id=iid):
                self._set_state(iid, "bootstrapping")
            case BootstrapProgress(instance_id=iid, step=step):
                self._set_state(iid, f"bootstrap: {step}")
            case BootstrapCompleted(instance_id=iid):
                self._set_state(iid, "ready")
            case InstanceStopping(instance_id=iid):
                self._set_state(iid, "stopping")
                index = self.node_of.get(iid)
                if index is not None and self.nodes[index].stopped is None:
                    self.nodes[index].stopped = self.clock()
            case Error(instance_id=iid) if iid is not None:
                self._set_state(iid, "error")
            case BatchSubmitted(calls=calls):
                self.announced += calls
            case TaskSubmitted(node=node, attempt=attempt, calls=calls):
                self._node(node).running += calls
                if attempt == 1:
                    self.announced = max(0, self.announced - calls)
            case TaskFinished(node=node, ok=ok, calls=calls):
                state = self._node(node)
                state.running = max(0, state.running - calls)
                if ok:
                    state.done += calls
                else:
                    state.failed += calls
            case Metrics(node=node):
                self._node(node).metrics = event
            case CostUpdate():
                self.cost = event
            case _:
                pass

    def _node(self, node: int) -> NodeState:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = NodeState(node, since=self.clock())
        return state

    def _set_state(self, instance_id: str, state: str) -> None:
        node = self.node_of.get(instance_id)
        if node is not None:
            self.nodes[node].state = state

    # -- figures --------------------------------------------------------------------------

    @property
    def total_nodes(self) -> int:
        return max(self.expected, len(self.nodes))

    @property
    def ready(self) -> int:
        return sum(1 for n in self.nodes.values() if n.state == "ready")

    def tasks(self) -> tuple[int, int, int]:
        """Tasks (attempts) running, done and failed, over every node."""
        nodes = self.nodes.values()
        return (
            sum(n.running for n in nodes),
            sum(n.done for n in nodes),
            sum(n.failed for n in nodes),
        )

    def hourly_rate(self) -> float | None:
        prices = [n.price for n in self.nodes.values() if n.price is not None]
        return sum(prices) if prices else None

    def cost_so_far(self) -> float | None:
        """Every node's price times the time since it was provisioned (the cost
        tracker's arithmetic), or the last ``CostUpdate`` when no price is known."""
        now = self.clock()
        priced = [n for n in self.nodes.values() if n.price is not None]
        if not priced:
            return self.cost.accumulated_cost if self.cost is not None else None
        return sum((n.price or 0.0) * ((n.stopped or now) - n.since) / 3600.0 for n in priced)

    def elapsed(self) -> float:
        return self.clock() - self.started


def _bar(done: int, total: int, width: int, unicode: bool) -> str:
    full, empty = ("█", "░") if unicode else ("#", ".")
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return full * filled + empty * (width - filled)


def _percent(value: float | None) -> str:
    return " --" if value is None else f"{value:3.0f}%"


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class LiveView:
    """A rich renderable: the spinner with its status line, then the pool's state."""

    def __init__(self, state: PoolState, spinner: Spinner) -> None:
        self.state = state
        self.spinner = spinner

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        width = max(20, options.max_width)
        # The spinner's line is cut like the others: a wrapped line would change the
        # view's height and leave stale lines behind on a narrow terminal.
        head = self.spinner.render(console.get_time())
        if isinstance(head, Text):
            head.no_wrap = True
            head.truncate(width, overflow="ellipsis")
        yield head
        for line in self.lines(width, unicode=console.encoding.lower().startswith("utf")):
            text = Text(line, no_wrap=True, overflow="ellipsis")
            text.truncate(width, overflow="ellipsis")
            yield text

    def lines(self, width: int, *, unicode: bool = True) -> list[str]:
        """The lines under the spinner, for a terminal ``width`` columns wide."""
        with self.state.lock:
            return self._lines(width, unicode)

    def _lines(self, width: int, unicode: bool) -> list[str]:
        state = self.state
        out: list[str] = []
        nodes = sorted(state.nodes.values(), key=lambda n: n.node)
        shown = nodes if len(nodes) <= MAX_NODE_ROWS else nodes[: MAX_NODE_ROWS - 1]
        gpu = any(n.metrics and n.metrics.gpu_utilization is not None for n in nodes)
        failures = any(n.failed for n in nodes)
        rows = [self._node_line(node, False, gpu, failures) for node in shown]
        # The table form when it fits, otherwise one short line per node under a legend.
        compact = width < COMPACT_BELOW or any(len(row) > width for row in rows)
        if compact and shown:
            out.append("   # state            sent/done load")
            rows = [self._node_line(node, True, gpu, failures) for node in shown]
        out.extend(rows)
        if len(shown) < len(nodes):
            rest = nodes[len(shown) :]
            ready = sum(1 for n in rest if n.state == "ready")
            running = sum(n.running for n in rest)
            out.append(f"  ... {len(rest)} more nodes: {ready} ready, {running} in flight")
        total = state.total_nodes
        if total and state.ready < total and any(n.state != "stopping" for n in nodes):
            label = "ready" if compact else "nodes ready"
            bar = _bar(state.ready, total, min(24, max(5, width - 30)), unicode)
            out.append(f"  {label:<8}{bar}  {state.ready}/{total}")
        running, done, failed = state.tasks()
        # The bar's total: every call sent, plus those of announced batches still to go.
        submitted = running + done + failed + state.announced
        if submitted:
            finished = done + failed
            if compact:
                bar = _bar(finished, submitted, max(5, width - 24), unicode)
                line = f"  tasks {bar} {finished}/{submitted}"
            else:
                bar = _bar(finished, submitted, min(24, max(5, width - 50)), unicode)
                line = f"  tasks   {bar}  {finished}/{submitted} done, {running} in flight"
                if state.announced:
                    line += f", {state.announced} to send"
            if failed:
                line += f", {failed} failed"
            out.append(line)
        cost = state.cost_so_far()
        if cost is not None:
            elapsed = _seconds(state.elapsed())
            if compact:
                out.append(f"  ${cost:.4f} so far, {elapsed}")
            else:
                line = f"  cost    ${cost:.4f} so far"
                rate = state.hourly_rate()
                if rate is not None:
                    line += f" at ${rate:.4f}/h"
                out.append(line + f", {elapsed}")
        return out

    @staticmethod
    def _node_line(node: NodeState, compact: bool, gpu: bool, failures: bool) -> str:
        sample = node.metrics
        cpu = sample.cpu_percent if sample else None
        mem = sample.memory_percent if sample else None
        gpu_load = sample.gpu_utilization if sample else None
        if compact:
            line = f"  {node.node:>2} {node.state[:16]:<16} {node.running}/{node.done}"
            line += f" cpu{_percent(cpu)}"
            if gpu:
                line += f" gpu{_percent(gpu_load)}"
            return line
        line = (
            f"  node {node.node:<3} {node.state[:18]:<18} {node.running:>3} in flight "
            f"{node.done:>5} done"
        )
        if failures:
            line += f" {node.failed:>3} failed"
        line += f"  cpu {_percent(cpu)}  mem {_percent(mem)}"
        if gpu:
            line += f"  gpu {_percent(gpu_load)}"
        return line
