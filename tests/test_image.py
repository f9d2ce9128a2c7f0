"""Image: validation, the content hash, and the bootstrap script, run for real with ``sh``."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

import skyward.image
from skyward.errors import ConfigurationError
from skyward.image import BootstrapStep, Image

CLIENT_MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"
SRC = Path(skyward.image.__file__).resolve().parents[1]
SHELLS = [name for name in ("sh", "dash") if shutil.which(name)]

# A fixed image and its hash. If this changes, every cached venv and snapshot key changes:
# bump the scheme tag on purpose, never by accident.
PINNED_IMAGE = Image(
    python="3.11",
    pip=["numpy==1.26.4", "torch"],
    pip_extra_index_url="https://download.pytorch.org/whl/cpu",
    apt=["libgl1", "ffmpeg"],
    env={"SECRET": "not-in-the-hash"},
)
PINNED_HASH = "ac22b5828a30"


# --------------------------------------------------------------------------- fields


def test_defaults() -> None:
    image = Image()
    assert image.python == CLIENT_MINOR
    assert image.pip == ()
    assert image.apt == ()
    assert image.pip_extra_index_url is None
    assert dict(image.env) == {}
    assert image.is_empty


def test_lists_become_tuples_and_env_is_a_read_only_copy() -> None:
    source = {"A": "1"}
    image = Image(pip=["six", "attrs"], apt=["ffmpeg"], env=source)
    assert image.pip == ("six", "attrs")
    assert image.apt == ("ffmpeg",)
    source["A"] = "changed"
    assert image.env["A"] == "1"
    with pytest.raises(TypeError):
        image.env["B"] = "2"  # type: ignore[index]


def test_patch_version_is_normalized_to_the_minor() -> None:
    assert Image(python="3.11.7").python == "3.11"
    assert Image(python="3.11.7") == Image(python="3.11")


def test_equality_and_hash_include_env() -> None:
    assert Image(env={"A": "1"}) == Image(env={"A": "1"})
    assert Image(env={"A": "1"}) != Image(env={"A": "2"})
    assert hash(Image(env={"A": "1", "B": "2"})) == hash(Image(env={"B": "2", "A": "1"}))
    assert len({Image(env={"A": "1"}), Image(env={"A": "1"}), Image()}) == 2


def test_repr_hides_env_values() -> None:
    text = repr(Image(env={"API_TOKEN": "hunter2"}))
    assert "API_TOKEN" in text
    assert "hunter2" not in text


def test_is_empty() -> None:
    assert Image(env={"A": "1"}).is_empty
    assert not Image(pip=["six"]).is_empty
    assert not Image(apt=["ffmpeg"]).is_empty
    assert not Image(pip_extra_index_url="https://example.org/simple").is_empty
    other = "3.12" if CLIENT_MINOR != "3.12" else "3.13"
    assert not Image(python=other).is_empty


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"python": "3"}, "image.python"),
        ({"python": "three"}, "image.python"),
        ({"python": "3.11t"}, "image.python"),
        ({"python": "2.7"}, "image.python"),
        ({"python": "3.10"}, "image.python"),
        ({"pip": "numpy"}, "image.pip"),
        ({"pip": 3}, "image.pip"),
        ({"pip": [""]}, "image.pip"),
        ({"pip": ["   "]}, "image.pip"),
        ({"pip": ["numpy\nrm -rf /"]}, "image.pip"),
        ({"pip": ["numpy\x00"]}, "image.pip"),
        ({"pip": [" numpy"]}, "image.pip"),
        ({"pip": ["--index-url=https://evil.example"]}, "image.pip"),
        ({"pip": [1]}, "image.pip"),
        ({"apt": "ffmpeg"}, "image.apt"),
        ({"apt": ["FFmpeg"]}, "image.apt"),
        ({"apt": ["a"]}, "image.apt"),
        ({"apt": ["ffmpeg; reboot"]}, "image.apt"),
        ({"apt": ["ffmpeg=1.0 x"]}, "image.apt"),
        ({"apt": ["-y"]}, "image.apt"),
        ({"env": [("A", "1")]}, "image.env"),
        ({"env": {"1A": "x"}}, "image.env"),
        ({"env": {"A-B": "x"}}, "image.env"),
        ({"env": {"A": 1}}, "image.env"),
        ({"env": {"A": "x\x00y"}}, "image.env"),
        ({"pip_extra_index_url": "ftp://example.org/simple"}, "image.pip_extra_index_url"),
        ({"pip_extra_index_url": "example.org/simple"}, "image.pip_extra_index_url"),
        ({"pip_extra_index_url": "https://"}, "image.pip_extra_index_url"),
        ({"pip_extra_index_url": "https://a.org/x y"}, "image.pip_extra_index_url"),
        ({"pip_extra_index_url": "https://a.org/\n"}, "image.pip_extra_index_url"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Image(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.fix
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "pip",
    [["numpy>=1.26,<2", "pkg[extra]==1.0", "torch @ https://example.org/t.whl", "a; b"]],
)
def test_valid_requirements_are_accepted(pip: list[str]) -> None:
    assert Image(pip=pip).pip == tuple(pip)


def test_valid_apt_names_are_accepted() -> None:
    names = [
        "ffmpeg",
        "libgl1",
        "g++",
        "libstdc++6=12.2.0-14",
        "python3.11-venv",
        "xz-utils=1:5.4~rc1",
    ]
    assert Image(apt=names).apt == tuple(names)


# --------------------------------------------------------------------------- content hash


def test_content_hash_shape() -> None:
    for image in (Image(), PINNED_IMAGE, Image(pip=["six"], apt=["ffmpeg"])):
        digest = image.content_hash()
        assert re.fullmatch(r"[0-9a-f]{12}", digest), digest


def test_content_hash_is_pinned() -> None:
    assert PINNED_IMAGE.content_hash() == PINNED_HASH


@pytest.mark.parametrize("seed", ["0", "12345"])
def test_content_hash_is_stable_across_processes(seed: str) -> None:
    code = (
        "from skyward.image import Image\n"
        "print(Image(python='3.11', pip=['numpy==1.26.4', 'torch'],"
        " pip_extra_index_url='https://download.pytorch.org/whl/cpu',"
        " apt=['libgl1', 'ffmpeg'], env={'OTHER': 'x'}).content_hash())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == PINNED_IMAGE.content_hash() == PINNED_HASH


def test_env_does_not_change_the_hash() -> None:
    assert Image(env={"A": "1"}).content_hash() == Image().content_hash()
    assert Image(env={"A": "1"}).content_hash() == Image(env={"A": "2"}).content_hash()


def test_pip_order_matters_apt_order_does_not() -> None:
    assert Image(pip=["a", "b"]).content_hash() != Image(pip=["b", "a"]).content_hash()
    assert Image(apt=["gcc", "make"]).content_hash() == Image(apt=["make", "gcc"]).content_hash()


def test_every_built_field_changes_the_hash() -> None:
    base = Image(python="3.11")
    variants = [
        Image(python="3.12"),
        Image(python="3.11", pip=["six"]),
        Image(python="3.11", apt=["ffmpeg"]),
        Image(python="3.11", pip_extra_index_url="https://example.org/simple"),
    ]
    hashes = {base.content_hash(), *(v.content_hash() for v in variants)}
    assert len(hashes) == 5


# --------------------------------------------------------------------------- script text

SCRIPT_CASES = {
    "empty": (Image(), 0, ()),
    "full": (
        Image(
            pip=["numpy>=1.26,<2", "torch @ https://example.org/t.whl", "it's"],
            pip_extra_index_url="https://download.pytorch.org/whl/cpu?a=1&b=2",
            apt=["ffmpeg", "libgl1=1.7.0-1"],
            env={"TOKEN": "s3cr3t-value"},
        ),
        0,
        (),
    ),
    "steps": (
        Image(pip=["six"]),
        0,
        (
            BootstrapStep("volumes", 'mkdir -p "$SKYWARD_HOME/volumes"\n', after="uv"),
            BootstrapStep("drivers", "if true; then\n  echo ok\nfi", after="apt"),
            BootstrapStep("empty", ""),
            BootstrapStep("comment", "echo x # trailing comment", after="skyward"),
        ),
    ),
    "ttl": (Image(apt=["ffmpeg"]), 3600, (BootstrapStep("v", "true"),)),
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", sorted(SCRIPT_CASES))
def test_script_parses(case: str, shell: str, tmp_path: Path) -> None:
    image, ttl, steps = SCRIPT_CASES[case]
    path = tmp_path / "bootstrap.sh"
    path.write_text(image.bootstrap(ttl=ttl, steps=steps))
    result = subprocess.run([shell, "-n", str(path)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_script_shape() -> None:
    script = SCRIPT_CASES["full"][0].bootstrap()
    assert script.startswith("#!/bin/sh\n")
    assert "set -eu" in script
    assert "curl" not in script
    assert "'it'\"'\"'s'" in script  # shlex-quoted
    assert "'https://download.pytorch.org/whl/cpu?a=1&b=2'" in script
    assert "install -y ffmpeg libgl1=1.7.0-1" in script


def test_env_values_never_reach_the_script() -> None:
    image = SCRIPT_CASES["full"][0]
    for script in (image.bootstrap(), image.bootstrap(ttl=60)):
        assert "s3cr3t-value" not in script
        assert "TOKEN" not in script


def test_no_apt_no_apt_step() -> None:
    assert "step apt" not in Image().bootstrap()
    assert "step apt" in Image(apt=["ffmpeg"]).bootstrap()


def test_ttl_only_when_asked() -> None:
    assert "self-destruct" not in Image().bootstrap()
    assert "self-destruct" in Image().bootstrap(ttl=5)


def test_plugin_step_is_placed_after_its_anchor() -> None:
    steps = [
        BootstrapStep("p-deps", "echo after-deps"),
        BootstrapStep("p-uv", "echo after-uv", after="uv"),
    ]
    script = Image().bootstrap(steps=steps)
    order = [
        script.index("_sky_say step uv"),
        script.index("echo after-uv"),
        script.index("_sky_say step deps"),
        script.index("echo after-deps"),
        script.index("_sky_say step skyward"),
    ]
    assert order == sorted(order)


@pytest.mark.parametrize("ttl", [-1, True, 1.5, "60"])
def test_bad_ttl(ttl: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Image().bootstrap(ttl=ttl)  # type: ignore[arg-type]
    assert info.value.field == "ttl"


def test_duplicate_step_names_are_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        Image().bootstrap(steps=[BootstrapStep("v", "true"), BootstrapStep("v", "true")])
    assert info.value.field == "steps"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "deps", "script": "true"}, "BootstrapStep.name"),
        ({"name": "server", "script": "true"}, "BootstrapStep.name"),
        ({"name": "two words", "script": "true"}, "BootstrapStep.name"),
        ({"name": "", "script": "true"}, "BootstrapStep.name"),
        ({"name": "v", "script": "a\x00b"}, "BootstrapStep.script"),
        ({"name": "v", "script": "true", "after": "server"}, "BootstrapStep.after"),
        ({"name": "v", "script": "true", "after": "nope"}, "BootstrapStep.after"),
    ],
)
def test_bootstrap_step_validation(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BootstrapStep(**kwargs)
    assert info.value.field == field


# --------------------------------------------------------------------------- running it
# Scripts run for real with ``sh``. With a fake ``uv``/``apt-get``/``id`` on PATH they test
# the script's own logic quickly; with the real ``uv`` they build a real venv.

MARKER = re.compile(r"^::skyward:(\w+) (.*)$")


def markers(stdout: str) -> list[tuple[str, str]]:
    return [m.groups() for line in stdout.splitlines() if (m := MARKER.match(line))]  # type: ignore[misc]


def write_exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def run_script(
    script: str, env: Mapping[str, str], tmp_path: Path, shell: str = "sh", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.sh"
    path.write_text(script)
    return subprocess.run(
        [shell, str(path)],
        check=False,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


@pytest.fixture
def fake_node(tmp_path: Path) -> dict[str, str]:
    """A PATH with logging fakes of uv and apt-get, and ``id -u`` answering 0 (root)."""
    bin_dir = tmp_path / "fakebin"
    log = tmp_path / "calls.log"
    write_exe(
        bin_dir / "uv",
        '#!/bin/sh\necho "uv $*" >> "$FAKE_LOG"\n'
        'if [ "$1" = venv ]; then mkdir -p "$4/bin"; ln -s /bin/true "$4/bin/python"; fi\n',
    )
    write_exe(bin_dir / "apt-get", '#!/bin/sh\necho "apt-get $*" >> "$FAKE_LOG"\n')
    write_exe(bin_dir / "id", '#!/bin/sh\necho "${FAKE_UID:-0}"\n')
    write_exe(bin_dir / "sudo", "#!/bin/sh\nexit 1\n")
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "SKYWARD_HOME": str(tmp_path / "sky"),
        "FAKE_LOG": str(log),
    }


def calls(env: Mapping[str, str]) -> list[str]:
    log = Path(env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_steps_run_in_order_and_plugins_see_the_venv(
    fake_node: dict[str, str], tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    steps = [
        BootstrapStep("p-skyward", "true", after="skyward"),
        BootstrapStep("p-deps", f'cd /; echo "$SKYWARD_PYTHON" > {seen}'),
        BootstrapStep("p-apt", "true", after="apt"),
        BootstrapStep("p-uv", "true", after="uv"),
    ]
    image = Image(pip=["six"], apt=["ffmpeg"])
    result = run_script(image.bootstrap(steps=steps), fake_node, tmp_path)
    assert result.returncode == 0, result.stderr
    started = [value for kind, value in markers(result.stdout) if kind == "step"]
    assert started == ["uv", "p-uv", "apt", "p-apt", "deps", "p-deps", "p-skyward", "server"]
    venv = Path(fake_node["SKYWARD_HOME"]) / "envs" / image.content_hash()
    assert seen.read_text().strip() == str(venv / "bin" / "python")
    # the plugin's `cd /` stayed in its subshell; the final line names the venv's python
    assert result.stdout.splitlines()[-1] == f"::skyward:python {venv / 'bin' / 'python'}"
    assert calls(fake_node) == [
        "apt-get -o DPkg::Lock::Timeout=600 update",
        "apt-get -o DPkg::Lock::Timeout=600 install -y ffmpeg",
        f"uv venv --python {image.python} {venv}",
        f"uv pip install --python {venv / 'bin' / 'python'} six",
    ]
    assert not (Path(fake_node["SKYWARD_HOME"]) / "run" / "bootstrap.lock").exists()


def test_second_run_is_cached(fake_node: dict[str, str], tmp_path: Path) -> None:
    image = Image(pip=["six"], apt=["ffmpeg"], pip_extra_index_url="https://example.org/s")
    first = run_script(image.bootstrap(), fake_node, tmp_path)
    assert first.returncode == 0, first.stderr
    assert calls(fake_node)[-1].endswith("--extra-index-url https://example.org/s six")
    before = len(calls(fake_node))
    second = run_script(image.bootstrap(), fake_node, tmp_path)
    assert second.returncode == 0, second.stderr
    cached = {value for kind, value in markers(second.stdout) if kind == "cached"}
    assert {"apt", "deps"} <= cached
    assert len(calls(fake_node)) == before  # neither uv nor apt-get ran again


def test_apt_without_root_or_sudo_fails_clearly(fake_node: dict[str, str], tmp_path: Path) -> None:
    env = {**fake_node, "FAKE_UID": "1000"}
    result = run_script(Image(apt=["ffmpeg"]).bootstrap(), env, tmp_path)
    assert result.returncode != 0
    assert "apt packages requested but neither root nor passwordless sudo" in result.stderr
    assert "::skyward:python" not in result.stdout
    assert not any(c.startswith("apt-get") for c in calls(env))
    assert not (Path(env["SKYWARD_HOME"]) / "run" / "bootstrap.lock").exists()


def test_apt_through_passwordless_sudo(fake_node: dict[str, str], tmp_path: Path) -> None:
    sudo = Path(fake_node["PATH"].split(":")[0]) / "sudo"
    write_exe(sudo, '#!/bin/sh\n[ "$1" = -n ] && shift\necho "sudo $*" >> "$FAKE_LOG"\n"$@"\n')
    env = {**fake_node, "FAKE_UID": "1000"}
    result = run_script(Image(apt=["ffmpeg"]).bootstrap(), env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get") for c in calls(env))


def test_failing_plugin_step_fails_the_bootstrap(fake_node: dict[str, str], tmp_path: Path) -> None:
    steps = [BootstrapStep("broken", "false\necho not-reached")]
    result = run_script(Image().bootstrap(steps=steps), fake_node, tmp_path)
    assert result.returncode != 0
    assert "not-reached" not in result.stdout
    assert "::skyward:python" not in result.stdout


def test_stale_lock_is_taken_over(fake_node: dict[str, str], tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = Path(fake_node["SKYWARD_HOME"]) / "run" / "bootstrap.lock"
    lock.mkdir(parents=True)
    (lock / "pid").write_text(f"{dead.pid}\n")
    result = run_script(Image().bootstrap(), fake_node, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not lock.exists()


def wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def test_ttl_fires_once_per_boot(fake_node: dict[str, str], tmp_path: Path) -> None:
    first_flag, second_flag = tmp_path / "off-1", tmp_path / "off-2"
    env = {**fake_node, "SKYWARD_POWEROFF_CMD": f"touch {shlex.quote(str(first_flag))}"}
    result = run_script(Image().bootstrap(ttl=2), env, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not first_flag.exists(), "the bootstrap waited for the timer instead of detaching it"
    assert wait_for(first_flag, 6), "the self-destruct command did not run"

    env = {**fake_node, "SKYWARD_POWEROFF_CMD": f"touch {shlex.quote(str(second_flag))}"}
    result = run_script(Image().bootstrap(ttl=1), env, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not wait_for(second_flag, 2), "a second timer was started in the same boot"


# --------------------------------------------------------------------------- real uv


def find_uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    path = uv.find_uv_bin()
    return str(path) if path else None


@pytest.fixture
def real_node(tmp_path: Path) -> dict[str, str]:
    """Environment for a script run with the real uv and this interpreter's Python."""
    uv = find_uv()
    if uv is None:
        message = "uv is needed for the end-to-end bootstrap tests: pip install uv"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    python_dir = Path(os.path.realpath(sys.executable)).parent
    path = os.pathsep.join([str(Path(uv).parent), str(python_dir), "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "SKYWARD_HOME": str(tmp_path / "sky"),
        "UV_OFFLINE": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }


@pytest.mark.parametrize("shell", SHELLS)
def test_end_to_end_builds_the_venv_then_caches_it(
    real_node: dict[str, str], tmp_path: Path, shell: str
) -> None:
    image = Image()
    script = image.bootstrap()
    first = run_script(script, real_node, tmp_path, shell=shell)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ("step", "deps") in markers(first.stdout)
    assert ("cached", "deps") not in markers(first.stdout)
    venv = Path(real_node["SKYWARD_HOME"]) / "envs" / image.content_hash()
    python = venv / "bin" / "python"
    assert first.stdout.splitlines()[-1] == f"::skyward:python {python}"
    assert (venv / ".skyward-deps-ok").exists()
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == CLIENT_MINOR

    started = time.monotonic()
    second = run_script(script, real_node, tmp_path, shell=shell)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stdout + second.stderr
    assert ("cached", "deps") in markers(second.stdout)
    assert ("cached", "uv") in markers(second.stdout) or ("step", "uv") in markers(second.stdout)
    assert second.stdout.splitlines()[-1] == f"::skyward:python {python}"
    assert elapsed < 3, f"the cached run took {elapsed:.1f}s"


def build_wheel(directory: Path, value: int) -> Path:
    """A minimal pure-Python wheel ``skyward_probe`` whose module holds ``VALUE``."""
    files = {
        "skyward_probe/__init__.py": f"VALUE = {value}\n",
        "skyward_probe-0.1.0.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: skyward-probe\nVersion: 0.1.0\n"
        ),
        "skyward_probe-0.1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("skyward_probe-0.1.0.dist-info/RECORD,,")
    files["skyward_probe-0.1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "skyward_probe-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_end_to_end_installs_uploaded_wheels(real_node: dict[str, str], tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, 1)
    env = {**real_node, "SKYWARD_WHEELS": str(wheels)}
    image = Image()
    python = Path(env["SKYWARD_HOME"]) / "envs" / image.content_hash() / "bin" / "python"

    def probe() -> str:
        out = subprocess.run(
            [str(python), "-c", "import skyward_probe; print(skyward_probe.VALUE)"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    first = run_script(image.bootstrap(), env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ("step", "skyward") in markers(first.stdout)
    assert probe() == "1"

    second = run_script(image.bootstrap(), env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert ("cached", "skyward") in markers(second.stdout)

    build_wheel(wheels, 2)  # same version, new content: a fresh dev build of the client
    third = run_script(image.bootstrap(), env, tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert ("cached", "skyward") not in markers(third.stdout)
    assert probe() == "2"


def test_end_to_end_self_destruct(real_node: dict[str, str], tmp_path: Path) -> None:
    flag = tmp_path / "powered-off"
    env = {**real_node, "SKYWARD_POWEROFF_CMD": f"touch {shlex.quote(str(flag))}"}
    result = run_script(Image().bootstrap(ttl=1), env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_for(flag, 5), "the self-destruct command did not run within 5 seconds"
