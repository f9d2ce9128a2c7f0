"""The bootstrap's one probe command: platform, uv, wheel sets and the sweep's scan.

A warm pool opening used to run a command for each question (and ``ps`` on every
opening); the probe asks them all at once and reads the processes only when a pool
directory is old enough to be swept.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import attrs

from skyward import remote_shell
from skyward.remote_shell import probe_node
from skyward.ssh import leftovers
from skyward.ssh.leftovers import SWEEP_AGE, parse_scan, scan_script, sweep_dead_pool_dirs
from skyward.ssh.transport import SSHTransport
from tests.conftest import wait_until
from tests.ssh_hosts import ClientKey, SSHTestHost
from tests.test_ssh_orphans import alive, provider_for, start_fake_agent


def _sh(script: str) -> str:
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_the_scan_reads_processes_only_when_a_directory_is_old_enough(tmp_path: Path) -> None:
    pools = tmp_path / ".skyward" / "pools"
    (pools / "fresh").mkdir(parents=True)
    script = f"cd {tmp_path} && {{ {scan_script(SWEEP_AGE)} }}"
    scan = parse_scan(_sh(script))
    assert list(scan.dirs) == ["fresh"]
    assert "::skyward:ps" not in _sh(script)
    (pools / "stale").mkdir()
    subprocess.run(["touch", "-d", "20 minutes ago", str(pools / "stale")], check=True)
    output = _sh(script)
    assert "::skyward:ps" in output
    assert parse_scan(output).dead_pool_dirs(SWEEP_AGE) == ["stale"]
    # the listing of `skyward ls` / `down` always reads them
    assert "::skyward:ps" in _sh(f"cd {tmp_path} && {{ {scan_script()} }}")


def test_parse_scan_ignores_what_comes_before_its_marks() -> None:
    output = (
        "Linux x86_64\n123 not a dir line\n::skyward:dirs\n1700000000 pool-a\n"
        "bad line\n::skyward:now 1700000900\n::skyward:ps\n"
        "  42 python -m skyward.agent --node=0 --job-id=pool-b --x\n  43 sleep 9\n"
    )
    scan = parse_scan(output)
    assert scan.dirs == {"pool-a": 1700000000}
    assert scan.agents == {42: "pool-b"}
    assert scan.now == 1700000900
    assert scan.dead_pool_dirs(SWEEP_AGE) == ["pool-a"]


def test_the_probe_answers_everything_and_the_sweep_spares_live_and_young_pools(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host: SSHTestHost = ssh_hosts(1)[0]
    names = ("probe-dead", "probe-young", "probe-live")
    host.run(
        "mkdir -p " + " ".join(f".skyward/pools/{n}" for n in names) + " .skyward/wheels/fp1 "
        "&& touch .skyward/wheels/fp1/.complete && mkdir -p .skyward/wheels/fp2 && "
        "touch -d '20 minutes ago' .skyward/pools/probe-dead .skyward/pools/probe-live"
    )
    leader, _child = start_fake_agent(host, "probe-live")
    provider = provider_for([host], ssh_client_key, ssh_known_hosts)
    transport = SSHTransport(
        provider._connection(provider.config.hosts[0]), pool_id="probe", name="node0"
    )
    try:
        probe = probe_node(transport.connection, extra=scan_script(SWEEP_AGE))
        scan = parse_scan(probe.output)
        assert probe.platform == f"{platform.system()} {platform.machine()}"
        assert "fp1" in probe.wheels
        assert "fp2" not in probe.wheels  # no .complete: an upload cut short
        assert probe.has_uv == (Path(host.home) / ".skyward/bin/uv").exists()
        assert scan.agents.get(leader) == "probe-live"
        # (other dead pools the farm's hosts collected in this session may go too)
        swept = sweep_dead_pool_dirs(transport.connection, scan)
        assert "probe-dead" in swept
        assert not {"probe-young", "probe-live"} & set(swept)
        left = host.run("ls .skyward/pools").stdout.split()
        assert "probe-dead" not in left
        assert {"probe-young", "probe-live"} <= set(left)
        assert alive(leader)
    finally:
        transport.connection.close()
        host.run(
            "rm -rf .skyward/pools/probe-young .skyward/pools/probe-live .skyward/wheels/fp1 "
            ".skyward/wheels/fp2"
        )
        host.kill_processes()


def test_sweep_without_a_scan_runs_its_own(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host: SSHTestHost = ssh_hosts(1)[0]
    host.run("mkdir -p .skyward/pools/own-dead && touch -d '1 hour ago' .skyward/pools/own-dead")
    provider = provider_for([host], ssh_client_key, ssh_known_hosts)
    connection = provider._connection(provider.config.hosts[0])
    try:
        assert "own-dead" in leftovers.sweep_dead_pool_dirs(connection)
    finally:
        connection.close()


def test_uv_is_replaced_while_another_pool_runs_the_old_one(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    host: SSHTestHost = ssh_hosts(1)[0]
    # a "uv" that is running (a copy of sleep): writing into it would fail with ETXTBSY
    host.run("mkdir -p .skyward/bin && cp /bin/sleep .skyward/bin/uv && chmod 755 .skyward/bin/uv")
    host.run("nohup .skyward/bin/uv 30 >/dev/null 2>&1 &")
    provider = provider_for([host], ssh_client_key, ssh_known_hosts)
    transport = SSHTransport(
        provider._connection(provider.config.hosts[0]), pool_id="uvswap", name="node0"
    )
    logged: list[str] = []

    class Reporter:
        def step(self, name: str, *, cached: bool = False) -> None:
            pass

        def log(self, line: str) -> None:
            logged.append(line)

    try:
        probe = probe_node(transport.connection)
        stale = attrs.evolve(probe, has_uv=False)
        assert remote_shell._upload_uv(transport.connection, stale, Reporter())
        version = host.run(".skyward/bin/uv --version")
        assert version.stdout.startswith("uv "), version
        assert host.run("ls -a .skyward/bin").stdout.split() == [".", "..", "uv"]
    finally:
        transport.connection.close()
        host.kill_processes()


def test_closing_while_the_agent_starts_stops_it(
    ssh_hosts: Any, ssh_client_key: ClientKey, ssh_known_hosts: Path
) -> None:
    # Another node failed while this one's agent was starting: close() has no pid yet, so
    # it stops the agent by its node and pool, and nothing of another pool or node.
    host: SSHTestHost = ssh_hosts(1)[0]
    started = []
    for node, pool in ((0, "closing"), (1, "closing"), (0, "otherpool")):
        result = host.run(
            f"setsid sh -c 'sleep 300; true' -m skyward.agent --node={node} --total-nodes=2 "
            f"--job-id={pool} --head-addr=x </dev/null >/dev/null 2>&1 & echo $!"
        )
        started.append(int(result.stdout.strip()))
    provider = provider_for([host], ssh_client_key, ssh_known_hosts)
    transport = SSHTransport(
        provider._connection(provider.config.hosts[0]), pool_id="closing", name="node0"
    )
    transport._starting = "[s]kyward[.]agent --node=0 .*--job-id=closing "
    try:
        transport.close()
        assert wait_until(lambda: not alive(started[0]), 5), "the starting agent was stopped"
        assert alive(started[1]), "another node's agent lives"
        assert alive(started[2]), "another pool's agent lives"
    finally:
        host.kill_processes()
