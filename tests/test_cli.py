"""The ``skyward`` command line: ``offers``, ``ls``, ``down``, ``doctor``, ``completion``,
against Local, the moto server and the DigitalOcean/Verda fakes; ``--json`` parsed, exit
codes, and what a user without credentials sees.

Every test that lets a command look at "every installed provider" first points each cloud
at a dead loopback port and removes its credentials (``no_clouds``), so nothing leaves
127.0.0.1 whatever the machine's own configuration.
"""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

import skyward as sky
from skyward.cli import main
from skyward.cli.doctor import local_checks
from skyward.provider import LaunchRequest, Provider
from skyward.selection import offers_for, rank_across, rank_offers, select_cheapest
from skyward.spec import build_spec
from tests.aws_fakes import AwsEnv
from tests.do_fakes import FakeDigitalOcean, do_fake
from tests.verda_fakes import VerdaFake, verda_env, verda_fake

__all__ = ["do_fake", "verda_env", "verda_fake"]  # fixtures, imported to be used here

DEAD = "http://127.0.0.1:9"


@pytest.fixture
def no_clouds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No cloud credentials anywhere; every cloud endpoint a closed loopback port."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "DIGITALOCEAN_", "VERDA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD)
    monkeypatch.setenv("SKYWARD_DIGITALOCEAN_ENDPOINT", DEAD)
    monkeypatch.setenv("SKYWARD_VERDA_ENDPOINT", DEAD)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def env_without_clouds(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIGITALOCEAN_", "VERDA_"))
    }
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "absent"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "absent"),
        AWS_ENDPOINT_URL=DEAD,
        SKYWARD_DIGITALOCEAN_ENDPOINT=DEAD,
        SKYWARD_VERDA_ENDPOINT=DEAD,
    )
    return env


# -- offers ----------------------------------------------------------------------------------


def test_offers_on_local_as_json(no_clouds: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = run_json(capsys, "offers", "--provider", "local")
    assert code == 0
    (offer,) = document["offers"]
    assert offer["provider"] == "local"
    assert offer["rank"] == 1
    assert offer["price_on_demand"] == 0
    assert offer["vcpus"] == os.cpu_count()
    assert document["unavailable_providers"] == []
    assert document["spec"]["nodes"] == 1


def test_offers_without_credentials_lists_each_cloud_with_its_fix(
    no_clouds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = run_json(capsys, "offers")
    assert code == 0, "Local answered: not having every cloud is no failure"
    why = {u["provider"]: u["reason"] for u in document["unavailable_providers"]}
    assert "AWS_ACCESS_KEY_ID" in why["aws"]
    assert "DIGITALOCEAN_TOKEN" in why["digitalocean"]
    assert "VERDA_CLIENT_ID" in why["verda"]
    assert "--host" in why["ssh"]
    assert document["offers"][0]["provider"] == "local"

    assert main(["offers", "--provider", "aws"]) == 1, "named, and it cannot answer"
    captured = capsys.readouterr()
    assert "aws" in captured.out
    assert "aws configure" in captured.out


def test_offers_exit_codes_for_no_match_and_bad_usage(
    no_clouds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["offers", "--provider", "local", "--machine", "no-such-type"]) == 3
    assert "no machine matches" in capsys.readouterr().err
    assert main(["offers", "--provider", "nope"]) == 2
    assert "unknown provider" in capsys.readouterr().err
    assert main(["offers", "--provider", "local", "--nodes", "0"]) == 2
    assert "nodes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["offers", "--spot", "--on-demand"])
    assert exited.value.code == 2


@pytest.mark.parametrize("allocation", [[], ["--spot"], ["--on-demand"]])
def test_offers_ranks_exactly_as_selection_cheapest(
    allocation: list[str],
    aws_env: AwsEnv,
    do_fake: FakeDigitalOcean,
    verda_env: VerdaFake,
    fresh_plugins: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = ["verda", "digitalocean", "aws"]
    flags = [f for n in names for f in ("--provider", n)]
    code, document = run_json(capsys, "offers", "--cpu", "2", *allocation, *flags)
    assert code == 0
    assert document["unavailable_providers"] == []
    shown = [(o["provider"], o["instance_type"], o["price_spot"]) for o in document["offers"]]
    sellers = {p for p, _, _ in shown}
    if allocation == ["--spot"]:  # DigitalOcean sells no spot machines
        assert sellers == {"aws", "verda"}
        assert all(price is not None for _, _, price in shown)
    else:
        assert sellers == set(names), "every provider side by side"

    kind = {"--spot": "spot", "--on-demand": "on-demand"}.get(allocation[0] if allocation else "")
    spec = build_spec(cpu=2, allocation=kind or "spot-if-available")
    providers: tuple[Provider, ...] = (
        sky.Verda().create(),  # type: ignore[attr-defined]
        sky.DigitalOcean().create(),  # type: ignore[attr-defined]
        sky.AWS().create(),  # type: ignore[attr-defined]
    )
    ranked = rank_across([(p, offers_for(p, spec)) for p in providers], spec)
    assert shown == [(o.provider, o.instance_type, o.price_spot) for _, o in ranked]
    assert shown[0][0] == select_cheapest(providers, spec).name
    for provider in providers:  # each provider's own rows keep rank_offers' order
        own = [t for p, t, _ in shown if p == provider.name]
        assert own == [o.instance_type for o in rank_offers(offers_for(provider, spec), spec)]
    unknown = float("inf")  # an offer without a price for the allocation ranks last
    prices = [
        unknown if o["pool_hourly"] is None else o["pool_hourly"]
        for o in document["offers"]
        if o["available"]
    ]
    assert prices == sorted(prices)


# -- ls --------------------------------------------------------------------------------------


def test_ls_shows_a_local_pool_with_age_state_and_cost(
    no_clouds: None, local_pool_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with local_pool_factory(nodes=2) as pool:
        code, document = run_json(capsys, "ls", "--provider", "local", "--pool", pool.pool_id)
    assert code == 0
    rows = document["resources"]
    assert len(rows) == 2
    for row in rows:
        assert row["pool"] == pool.pool_id
        assert row["kind"] == "instance"
        assert row["state"] == "running"
        assert 0 <= row["age_seconds"] < 600
        assert row["cost_so_far"] == 0
    assert document["problems"] == []


def _aws_seed(region: str, pool: str) -> str:
    ec2 = boto3.client("ec2", region_name=region)
    tags = [{"Key": "skyward:managed", "Value": "true"}, {"Key": "skyward:pool", "Value": pool}]
    ec2.create_key_pair(
        KeyName=f"skyward-{pool}", TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}]
    )
    return str(
        ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"]
    )


def test_ls_on_aws_finds_instances_and_leftovers_in_every_region(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    east = _aws_seed("us-east-1", "sky-east")
    west = _aws_seed("eu-west-1", "sky-west")
    code, document = run_json(capsys, "ls", "--provider", "aws")
    assert code == 0
    instances = {r["id"]: r for r in document["resources"] if r["kind"] == "instance"}
    assert set(instances) == {east, west}
    assert instances[west]["where"] == "eu-west-1"
    assert instances[west]["pool"] == "sky-west"
    assert instances[west]["state"] == "running"
    assert instances[west]["age_seconds"] is not None
    assert instances[east]["hourly_price"] == pytest.approx(0.0104)  # the fake price table
    assert instances[east]["cost_so_far"] is not None
    keys = {r["id"] for r in document["resources"] if r["kind"] == "key-pair"}
    assert {"skyward-sky-east", "skyward-sky-west"} <= keys

    main(["ls", "--provider", "aws"])  # plain text off a terminal: a header, then rows
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# resources"
    assert any(line.startswith(f"aws\tinstance\t{west}\tsky-west\trunning") for line in lines)


def _launch(provider: Provider, pool_id: str) -> None:
    spec = build_spec(cpu=2)
    offer = rank_offers(offers_for(provider, spec), spec)[0]
    infra = provider.prepare(spec, pool_id)
    tags = {"skyward:managed": "true", "skyward:pool": pool_id}
    provider.launch(infra, LaunchRequest(pool_id, offer, 1, spec, tags))


def test_ls_and_down_on_digitalocean_and_verda(
    do_fake: FakeDigitalOcean,
    verda_env: VerdaFake,
    fresh_plugins: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _launch(sky.DigitalOcean(ssh_cidr="127.0.0.1/32").create(), "sky-dotest001")  # type: ignore[attr-defined]
    _launch(sky.Verda().create(), "sky-vdtest001")  # type: ignore[attr-defined]
    flags = ["--provider", "digitalocean", "--provider", "verda"]
    code, document = run_json(capsys, "ls", *flags)
    assert code == 0
    pools = {(r["provider"], r["pool"]) for r in document["resources"] if r["kind"] == "instance"}
    assert pools == {("digitalocean", "sky-dotest001"), ("verda", "sky-vdtest001")}
    for row in document["resources"]:
        if row["kind"] == "instance":  # both report launch time and price
            assert row["age_seconds"] is not None, row
            assert row["hourly_price"] > 0, row
            assert row["cost_so_far"] >= 0, row

    code, document = run_json(capsys, "down", "--dry-run", *flags)
    assert code == 0
    assert document["dry_run"] is True
    assert len([r for r in document["resources"] if r["kind"] == "instance"]) == 2
    assert len(do_fake.live()) == 1

    code, document = run_json(capsys, "down", "--yes", *flags)
    assert code == 0
    assert document["problems"] == []
    code, document = run_json(capsys, "ls", *flags)
    assert [r for r in document["resources"] if r["kind"] == "instance"] == []


# -- down ------------------------------------------------------------------------------------


def test_down_refuses_off_a_terminal_without_yes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skyward", "down", "--provider", "local"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env_without_clouds(tmp_path),
        check=False,
    )
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert "--dry-run" in result.stderr


class _Terminal(io.StringIO):
    """Standard input as a person at a terminal: answers the prompt with ``answer``."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answer", ["n\n", "y\n"])
def test_down_on_a_terminal_asks_first(
    answer: str,
    aws_env: AwsEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instance = _aws_seed("us-west-2", "sky-ask")
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    assert main(["down", "--provider", "aws"]) == 0
    captured = capsys.readouterr()
    assert "Remove these 2 resource(s)? [y/N]" in captured.err
    assert instance in captured.out
    ec2 = boto3.client("ec2", region_name="us-west-2")
    state = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    expected = "running" if answer.startswith("n") else ("shutting-down", "terminated")
    assert state["State"]["Name"] in expected
    if answer.startswith("n"):
        assert "nothing removed" in captured.err


# -- doctor ----------------------------------------------------------------------------------


def test_doctor_on_aws_shows_the_identity_and_every_dry_run(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = run_json(capsys, "doctor", "--provider", "aws")
    checks = {r["check"]: r for r in document["checks"] if r["scope"] == "aws"}
    assert checks["credentials"]["ok"]
    assert "arn:aws" in checks["identity"]["detail"]
    for name in ("ec2:RunInstances", "ec2:CreateLaunchTemplate", "ec2:CreateFleet"):
        assert checks[name]["ok"], checks[name]
        assert checks[name]["detail"] == "allowed (dry run)"
    assert checks["ssm:GetParameter"]["ok"]
    failed = [r for r in document["checks"] if r["status"] == "fail"]
    assert code == (1 if failed else 0)
    assert document["ok"] is (not failed)
    assert "aws" in document["ready_providers"]
    ec2 = boto3.client("ec2", region_name="us-east-1")
    assert ec2.describe_instances()["Reservations"] == [], "dry runs create nothing"
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def test_doctor_without_credentials_says_how_to_fix(
    no_clouds: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = run_json(capsys, "doctor", "--provider", "aws")
    assert code == 1, "aws was named and is not set up"
    (credentials,) = [r for r in document["checks"] if r["scope"] == "aws"]
    assert credentials["status"] == "fail"
    assert "aws configure" in credentials["fix"]

    code, document = run_json(capsys, "doctor")
    statuses = {r["scope"]: r["status"] for r in document["checks"] if r["check"] == "credentials"}
    assert statuses["aws"] == statuses["digitalocean"] == statuses["verda"] == "warn"
    assert statuses["local"] == "ok"
    local_failed = [r for r in document["checks"] if r["status"] == "fail"]
    assert code == (1 if local_failed else 0)


def test_doctor_on_digitalocean_and_verda_makes_a_read_call(
    do_fake: FakeDigitalOcean,
    verda_env: VerdaFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--provider", "digitalocean", "--provider", "verda"]
    _, document = run_json(capsys, "doctor", *flags)
    reads = {r["scope"]: r for r in document["checks"] if r["check"] == "read call"}
    assert reads["digitalocean"]["ok"], reads
    assert reads["verda"]["ok"], reads

    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_" + "0" * 64)  # found, but wrong
    code, document = run_json(capsys, "doctor", *flags)
    assert code == 1
    reads = {r["scope"]: r for r in document["checks"] if r["check"] == "read call"}
    assert reads["digitalocean"]["status"] == "fail"
    assert reads["digitalocean"]["fix"]


def test_local_checks_find_known_hosts_and_keys(tmp_path: Path) -> None:
    missing = {c.name: c for c in local_checks(tmp_path)}
    assert not missing["known_hosts"].ok
    assert "ssh-keyscan" in missing["known_hosts"].fix
    assert not missing["ssh keys"].ok
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("host ssh-ed25519 AAAA\n")
    (tmp_path / ".ssh" / "id_ed25519").write_text("key")
    found = {c.name: c for c in local_checks(tmp_path)}
    assert found["known_hosts"].ok
    assert found["ssh keys"].ok
    assert found["python"].ok
    assert found["uv"].ok


# -- completion, entry points, terminal output ----------------------------------------------


def test_bash_completion_completes_commands_options_and_providers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out

    def complete(*words: str) -> list[str]:
        line = " ".join(f'"{w}"' for w in words)
        program = (
            f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _skyward; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert set(complete("skyward", "")) >= {"offers", "ls", "down", "doctor", "completion"}
    assert complete("skyward", "do") == ["down", "doctor"]
    assert "--dry-run" in complete("skyward", "down", "--d")
    assert "local" in complete("skyward", "offers", "--provider", "")
    assert complete("skyward", "completion", "f") == ["fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "offers" in script
    assert "doctor" in script
    if shutil.which(shell):
        check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
        subprocess.run([*check], input=script, text=True, check=True)


def test_python_dash_m_skyward_and_version(tmp_path: Path) -> None:
    env = env_without_clouds(tmp_path)
    version = subprocess.run(
        [sys.executable, "-m", "skyward", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert version.returncode == 0
    assert version.stdout.startswith("skyward ")
    listed = subprocess.run(
        [sys.executable, "-m", "skyward", "providers", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    names = {p["name"] for p in json.loads(listed.stdout)["providers"]}
    assert {"local", "ssh", "aws", "digitalocean", "verda"} <= names


def test_a_terminal_gets_a_table_and_a_pipe_gets_plain_lines(tmp_path: Path) -> None:
    env = env_without_clouds(tmp_path) | {"COLUMNS": "120", "TERM": "xterm"}
    command = [sys.executable, "-m", "skyward", "providers"]
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=follower, stderr=follower, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0
    finally:
        os.close(leader)
    screen = b"".join(chunks).decode()
    assert "───" in screen, screen
    assert "sky.Local" in screen
    piped = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "local\tsky.Local" in piped.stdout
    assert "─" not in piped.stdout


@pytest.mark.parametrize(
    ("code", "ok", "fix"),
    [
        ("DryRunOperation", True, ""),
        ("UnauthorizedOperation", False, "IAM policy"),
        ("AuthFailure", False, "aws configure"),
        ("InvalidGroup.NotFound", True, ""),  # past the permission check
    ],
)
def test_aws_dry_run_answers_map_to_allowed_or_denied(code: str, ok: bool, fix: str) -> None:
    """What EC2 answers a dry run with (moto only ever allows, so the denials are the
    SDK's own error objects, as botocore raises them)."""
    from botocore.exceptions import ClientError

    from skyward_aws.doctor import _try

    def call() -> None:
        raise ClientError({"Error": {"Code": code, "Message": "m"}}, "RunInstances")

    check = _try("ec2:RunInstances", call)
    assert check.ok is ok
    assert fix in check.fix


def test_offers_in_several_regions_side_by_side(
    aws_env: AwsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--provider", "aws", "--region", "us-east-1", "--region", "us-west-2"]
    code, document = run_json(capsys, "offers", "--cpu", "2", *flags)
    assert code == 0
    assert {o["region"] for o in document["offers"]} == {"us-east-1", "us-west-2"}

    code, document = run_json(capsys, "offers", "--provider", "aws", "--region", "mars-1")
    assert code == 1, "the provider was named and cannot answer there"
    (why,) = document["unavailable_providers"]
    assert why["region"] == "mars-1"
    assert "region" in why["reason"]
