"""The live display as a person sees it: a real pool under tmux, the screen read back with
``capture-pane``, at 100 columns in colour and at 40 columns with ``NO_COLOR``.

The program's calls wait for a gate file, so the screen is read while they are in flight;
then the gate opens and the final screen is read after the program ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until

PROGRAM = """
import os
import sys
import time
from pathlib import Path

import skyward as sky

gate = Path(sys.argv[1])


@sky.compute
def quick(i: int) -> int:
    return i


@sky.compute
def gated(i: int) -> int:
    print(f"working on {i}")
    while not gate.exists():
        time.sleep(0.05)
    return i


display = os.environ.get("TEST_DISPLAY", "spinner")
with sky.ComputePool(provider=sky.Local(), nodes=2, display=display) as pool:
    sky.gather(*(quick(i) for i in range(4))) >> pool
    print("quick calls done")
    print("gated:", sum(sky.gather(*(gated(i) for i in range(6))) >> pool))
"""

COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;[25])[;m]")


def _tmux_available() -> bool:
    if shutil.which("tmux"):
        return True
    if os.environ.get("CI"):
        pytest.fail("tmux is missing: .ci/run installs it")
    pytest.skip("tmux is not installed (apt-get install tmux)")
    return False


class Screen:
    """One tmux server on a private socket, running one program in one pane."""

    def __init__(self, tmp_path: Path, width: int, env: dict[str, str]) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        script = tmp_path / "program.py"
        script.write_text(PROGRAM)
        self.gate = tmp_path / "gate"
        settings = " ".join(f"{k}={v}" for k, v in env.items())
        # COLUMNS/LINES (pytest's terminal sets them) would override the pane's own size.
        command = (
            f"env -u COLUMNS -u LINES {settings} {sys.executable} {script} {self.gate}; "
            "echo EXIT=$?; sleep 120"
        )
        self._tmux("new-session", "-d", "-x", str(width), "-y", "30", command)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-u", "-S", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return result.stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p")

    def escapes(self) -> str:
        return self._tmux("capture-pane", "-p", "-e")

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        found = wait_until(lambda: re.search(pattern, self.text(), re.M) is not None, timeout, 0.2)
        screen = self.text()
        assert found, f"{pattern!r} never appeared on the screen:\n{screen}"
        return screen

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def screens(tmp_path: Path) -> Iterator[list[Screen]]:
    _tmux_available()
    made: list[Screen] = []
    yield made
    for screen in made:
        screen.gate.touch()
    for screen in made:
        screen.close()


def _open(screens: list[Screen], tmp_path: Path, width: int, **env: str) -> Screen:
    base = {"SKYWARD_METRICS_INTERVAL": "0.5", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    screen = Screen(tmp_path, width, {**base, **env})
    screens.append(screen)
    return screen


def _view(screen_text: str) -> list[str]:
    """The live view's lines: from the spinner's line to the end of the screen."""
    lines = screen_text.rstrip("\n").splitlines()
    start = next(i for i, line in enumerate(lines) if "running on 2 nodes" in line)
    return [line for line in lines[start:] if line.strip()]


def test_live_view_at_100_columns_in_colour(screens: list[Screen], tmp_path: Path) -> None:
    screen = _open(screens, tmp_path, 100)
    # Every gated call is on a node, and both nodes have reported their load.
    text = screen.wait_for(r"^  tasks .* 4/10 done, 6 in flight$")
    text = screen.wait_for(r"node 0 .* cpu +\d+%.*\n  node 1 .* cpu +\d+%")
    # What the program and its nodes printed stays above the view, as plain lines.
    assert "quick calls done" in text
    assert re.search(r"^\[node [01]\] working on \d$", text, re.M), text
    view = _view(text)
    assert re.match(r"^\S running on 2 nodes \| cpu \d+% mem \d+% \| \$0\.0000 so far$", view[0])
    assert re.match(r"^  node 0 +ready +\d in flight +\d done  cpu +\d+%  mem +\d+%$", view[1])
    assert re.match(r"^  node 1 +ready +\d in flight +\d done  cpu +\d+%  mem +\d+%$", view[2])
    in_flight = sum(int(re.search(r"(\d) in flight", line).group(1)) for line in view[1:3])  # type: ignore[union-attr]
    assert in_flight == 6
    assert re.match(r"^  tasks +█+░+  4/10 done, 6 in flight$", view[3])
    assert re.match(r"^  cost +\$0\.0000 so far at \$0\.0000/h, \d+s$", view[4])
    assert len(view) == 5
    assert COLOUR.search(screen.escapes()), "a terminal in colour shows colour"

    screen.gate.touch()
    text = screen.wait_for(r"^EXIT=0$")
    # The view is gone; what remains is the output, the totals and the cost.
    assert "in flight" not in text
    assert "gated: 15" in text
    assert re.search(r"^10 calls finished$", text, re.M)
    assert re.search(r"^cost \$0\.0000 over [\d.]+s \(0 spot, 2 on-demand\)$", text, re.M)


def test_live_view_at_40_columns_without_colour(screens: list[Screen], tmp_path: Path) -> None:
    screen = _open(screens, tmp_path, 40, NO_COLOR="1")
    text = screen.wait_for(r"^  tasks .* 4/10$")
    text = screen.wait_for(r"^ +0 ready .* cpu +\d+%\n +1 ready .* cpu +\d+%")
    view = _view(text)
    # Nothing wraps: the status line is cut with an ellipsis, each node has one line.
    assert view[0].endswith("…") or len(view[0]) <= 40
    assert view[1] == "   # state            sent/done load"
    assert re.match(r"^   0 ready +\d/\d cpu +\d+%$", view[2])
    assert re.match(r"^   1 ready +\d/\d cpu +\d+%$", view[3])
    assert re.match(r"^  tasks █+░+ 4/10$", view[4])
    assert re.match(r"^  \$0\.0000 so far, \d+s$", view[5])
    assert len(view) == 6
    assert all(len(line) <= 40 for line in text.splitlines())
    assert not COLOUR.search(screen.escapes()), "NO_COLOR: no colour at all"
    screen.gate.touch()
    text = screen.wait_for(r"^EXIT=0$")
    assert "sent/done" not in text
    assert re.search(r"^10 calls finished$", text, re.M)
    time.sleep(0)  # the pane keeps its last screen until the fixture kills the server


def test_log_mode_stays_plain_lines_on_a_terminal(screens: list[Screen], tmp_path: Path) -> None:
    screen = _open(screens, tmp_path, 100, TEST_DISPLAY="log")
    text = screen.wait_for(r"^\[node 1\] working on \d$")
    text = screen.wait_for(r"^\[node 0\] working on \d$")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "creating infrastructure"
    assert "infrastructure ready in local" in lines
    assert any(re.match(r"^node [01] \(sky-\w+-node[01]\) ready$", line) for line in lines)
    assert "quick calls done" in lines
    # No live region: nothing redrawn, no progress, no per-node table.
    assert not any(mark in text for mark in ("in flight", "█", "so far"))
    screen.gate.touch()
    text = screen.wait_for(r"^EXIT=0$")
    assert re.search(r"^stopping pool$", text, re.M)
    assert re.search(r"^cost \$0\.0000 over [\d.]+s", text, re.M)
    assert "calls finished" not in text
