"""make_display: log, spinner and quiet modes on in-memory consoles."""

from __future__ import annotations

import io
import re
import threading

import pytest
from rich.console import Console

from skyward.display import (
    Display,
    DisplayMode,
    LogDisplay,
    QuietDisplay,
    SpinnerDisplay,
    make_display,
)
from skyward.errors import ConfigurationError
from skyward.events import (
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
)

COST_FINAL = CostFinal(
    total_cost=0.0,
    total_seconds=12.3,
    hourly_rate=0.0,
    spot_count=0,
    ondemand_count=2,
    savings_vs_ondemand=0.0,
)

SEQUENCE: list[SkywardEvent] = [
    InfraCreating(),
    InfraCreated(region="us-east-1"),
    InstanceLaunching(count=1, instance_type="t3.micro", provider="aws"),
    InstanceProvisioned(
        instance_id="i-abc",
        node=0,
        spot=True,
        provider="aws",
        ip="10.0.0.5",
        instance_type="t3.micro",
        price_on_demand=0.0104,
        price_spot=0.0031,
    ),
    BootstrapStarting(instance_id="i-abc"),
    BootstrapProgress(instance_id="i-abc", step="deps", cached=True),
    BootstrapCompleted(instance_id="i-abc"),
    LogLine(node=0, instance_id="i-abc", line="hello from node\n", timestamp=1.0),
    PoolStopping(),
    InstanceStopping(instance_id="i-abc"),
    COST_FINAL,
]


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=80), buffer


def terminal_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=80, color_system="truecolor"), buffer


def without_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", text)


def spinning(display: Display) -> bool:
    return isinstance(display, SpinnerDisplay) and display.running


def metrics_event(node: int = 0) -> Metrics:
    return Metrics(
        instance_id="i-abc",
        node=node,
        cpu_percent=42.0,
        memory_percent=10.0,
        memory_used_mb=100.0,
        memory_total_mb=1000.0,
        gpu_utilization=90.0,
    )


def test_log_mode_lines_for_a_pool_lifetime() -> None:
    console, buffer = plain_console()
    display = make_display("log", console=console)
    assert isinstance(display, LogDisplay)
    for event in SEQUENCE:
        assert display(event) is None
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "creating infrastructure",
        "infrastructure ready in us-east-1",
        "launching 1 t3.micro instance on aws",
        "node 0 provisioned: i-abc, t3.micro, at 10.0.0.5, spot, $0.0031/h",
        "node 0 (i-abc) bootstrapping",
        "node 0 (i-abc) bootstrap: deps (cached)",
        "node 0 (i-abc) ready",
        "[node 0] hello from node",
        "stopping pool",
        "stopping node 0 (i-abc)",
        "cost $0.0000 over 12.3s (0 spot, 2 on-demand)",
    ]


def test_log_mode_other_lines() -> None:
    console, buffer = plain_console()
    display = make_display("log", console=console)
    display(metrics_event())
    display(LogLine(node=1, instance_id="i-x", line="oops", timestamp=1.0, stream="stderr"))
    display(Error(message="boom"))
    display(Error(message="lost", instance_id="i-x"))
    display(CostUpdate(75.0, 0.5, 3.0, 1, 1))
    display(CostFinal(1.5, 3723.0, 3.0, 1, 1, 1.0))
    display(BootstrapProgress(instance_id="i-x", step="uv"))
    assert buffer.getvalue().splitlines() == [
        "[node 1] (stderr) oops",
        "error: boom",
        "error on i-x: lost",
        "cost so far $0.5000 over 1m15s at $3.0000/h (1 spot, 1 on-demand)",
        "cost $1.5000 over 1h02m03s (1 spot, 1 on-demand), saved $1.0000 vs on-demand",
        "i-x bootstrap: uv",
    ]


def test_no_escape_codes_when_not_a_terminal() -> None:
    console, buffer = plain_console()
    display = make_display("log", console=console)
    for event in [
        *SEQUENCE,
        Error(message="bad", instance_id="i-abc"),
        LogLine(node=0, instance_id="i-abc", line="\x1b[31mred\x1b[0m text", timestamp=1.0),
        LogLine(node=0, instance_id="i-abc", line="err", timestamp=1.0, stream="stderr"),
        LogLine(node=0, instance_id="i-abc", line="stray \x1b escape", timestamp=1.0),
    ]:
        display(event)
    out = buffer.getvalue()
    assert "\x1b" not in out
    assert "[node 0] red text" in out


def test_markup_in_log_lines_is_literal() -> None:
    for make in (plain_console, terminal_console):
        console, buffer = make()
        display = make_display("log", console=console)
        display(LogLine(node=2, instance_id="i", line="[bold]not bold[/bold] :smile:", timestamp=0))
        display(Error(message="[red]x[/red] failed"))
        out = buffer.getvalue()
        assert "[bold]not bold[/bold] :smile:" in out
        assert "[red]x[/red] failed" in out


def test_long_lines_are_not_wrapped() -> None:
    console, buffer = plain_console()
    display = make_display("log", console=console)
    line = "x" * 300
    display(LogLine(node=0, instance_id="i", line=line, timestamp=0))
    assert buffer.getvalue() == f"[node 0] {line}\n"


def test_error_is_red_on_a_terminal() -> None:
    console, buffer = terminal_console()
    display = make_display("log", console=console)
    display(Error(message="boom"))
    out = buffer.getvalue()
    assert "error: boom" in out
    assert "\x1b[" in out


def test_quiet_prints_nothing() -> None:
    console, buffer = plain_console()
    display = make_display("quiet", console=console)
    assert isinstance(display, QuietDisplay)
    for event in [*SEQUENCE, Error(message="boom"), metrics_event()]:
        assert display(event) is None
    display.close()
    assert buffer.getvalue() == ""


def test_spinner_degrades_to_log_lines_when_not_a_terminal() -> None:
    console, buffer = plain_console()
    display = make_display("spinner", console=console)
    assert not isinstance(display, SpinnerDisplay)
    for event in SEQUENCE:
        display(event)
    display.close()
    out = buffer.getvalue()
    assert "\x1b" not in out
    assert "[node 0] hello from node" in out
    assert out.splitlines()[-1] == "cost $0.0000 over 12.3s (0 spot, 2 on-demand)"


def test_spinner_on_a_terminal_runs_and_stops_on_cost_final() -> None:
    console, buffer = terminal_console()
    display = make_display("spinner", console=console)
    assert isinstance(display, SpinnerDisplay)
    for event in SEQUENCE[:7]:
        display(event)
    assert spinning(display)
    display(metrics_event())
    display(LogLine(node=0, instance_id="i-abc", line="[bold]hello[/bold]", timestamp=1.0))
    display(Error(message="something broke"))
    for event in SEQUENCE[7:]:
        display(event)
    assert not spinning(display)
    display.close()  # idempotent
    out = without_ansi(buffer.getvalue())
    assert "[node 0] " in out
    assert "[bold]hello[/bold]" in out
    assert "something broke" in out
    assert "cost $0.0000 over 12.3s (0 spot, 2 on-demand)" in out


def test_spinner_status_text_follows_phases() -> None:
    console, _ = terminal_console()
    display = make_display("spinner", console=console)
    assert isinstance(display, SpinnerDisplay)
    with display:
        display(InstanceLaunching(count=2, instance_type="t3.micro", provider="aws"))
        for node in range(2):
            display(
                InstanceProvisioned(instance_id=f"i-{node}", node=node, spot=False, provider="aws")
            )
        display(BootstrapStarting(instance_id="i-0"))
        display(BootstrapProgress(instance_id="i-1", step="apt"))
        display(BootstrapCompleted(instance_id="i-0"))
        assert display._status() == "bootstrapping 1/2 nodes | apt"
        display(BootstrapCompleted(instance_id="i-1"))
        display(metrics_event(0))
        display(CostUpdate(10.0, 0.25, 3.0, 0, 2))
        assert display._status() == "running on 2 nodes | cpu 42% mem 10% gpu 90% | $0.2500 so far"
        assert spinning(display)
    assert not spinning(display)


def test_spinner_closes_without_cost_final_and_later_events_print() -> None:
    console, buffer = terminal_console()
    display = make_display("spinner", console=console)
    assert isinstance(display, SpinnerDisplay)
    display(InfraCreating())
    assert spinning(display)
    display.close()
    assert not spinning(display)
    display(LogLine(node=3, instance_id="i", line="late line", timestamp=0))
    display(PoolStopping())
    out = buffer.getvalue()
    assert "late line" in out
    assert "stopping pool" in out
    assert not spinning(display)


def test_two_spinners_on_one_console_fall_back_to_lines() -> None:
    console, buffer = terminal_console()
    first = make_display("spinner", console=console)
    second = make_display("spinner", console=console)
    with first, second:
        first(InfraCreating())
        second(InfraCreated(region="r-2"))
        assert isinstance(first, SpinnerDisplay)
        assert spinning(first)
    assert "infrastructure ready in r-2" in buffer.getvalue()


def test_spinner_from_many_threads() -> None:
    console, buffer = terminal_console()
    display = make_display("spinner", console=console)

    def node_output(node: int) -> None:
        for i in range(50):
            display(LogLine(node=node, instance_id=f"i-{node}", line=f"line {i}", timestamp=0))
            display(metrics_event(node))

    threads = [threading.Thread(target=node_output, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    display(COST_FINAL)
    display.close()
    out = without_ansi(buffer.getvalue())
    for node in range(4):
        assert f"[node {node}] line 49" in out


def test_display_is_closable_context_manager() -> None:
    modes: tuple[DisplayMode, ...] = ("log", "spinner", "quiet")
    for mode in modes:
        console, _ = plain_console()
        display = make_display(mode, console=console)
        assert isinstance(display, Display)
        with display as entered:
            assert entered is display
        display.close()


def test_default_console_is_stderr() -> None:
    display = make_display("log")
    assert isinstance(display, LogDisplay)
    assert display.console.stderr


def test_invalid_mode() -> None:
    with pytest.raises(ConfigurationError) as info:
        make_display("fancy")  # type: ignore[arg-type]
    assert info.value.field == "display"
    assert 'Use "log", "spinner" or "quiet"' in str(info.value)
