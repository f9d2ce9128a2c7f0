"""Every user value that reaches a shell arrives as one argument, verbatim, and runs nothing.

Extends ``tests/test_image.py``'s run of the bootstrap script with fakes: here hypothesis
feeds it hostile requirement strings, index URLs and package names (whatever validation
lets through), and the fake ``uv``/``apt-get`` record their argv NUL-separated, so a
value split, joined or executed shows up. A canary file proves no command substitution
ran. The user-data script gets hostile login names the same way.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skyward.errors import ConfigurationError
from skyward.image import Image
from skyward.ssh.user_data import NodeIdentity, user_data_script

CANARY = "/tmp/skyward-quoting-canary"
INJECTIONS = [
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"x; touch {CANARY}",
    f"x && touch {CANARY}",
    f"x | touch {CANARY}",
    "it's",
    'say "hi"',
    "a\\b",
    "$HOME",
    "${PATH}",
    "*",
    "~",
    "-rf",
    "a  b",
    "#comment",
]
TEXT = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(
        alphabet=st.sampled_from(list("ab09 _-./:@=[]~'\"`$;&|<>()*?!\\{}#%,+^")),
        min_size=1,
        max_size=16,
    ),
)
QUICK = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FAKE_EXE = (
    '#!/bin/sh\n{ printf "%s" "{name}"; printf "\\0%s" "$@"; printf "\\n"; } >> "$FAKE_ARGV"\n'
)
FAKE_UV = (
    FAKE_EXE.replace("{name}", "uv")
    + 'if [ "$1" = venv ]; then mkdir -p "$4/bin"; ln -s /bin/true "$4/bin/python"; fi\n'
)


def run_bootstrap(image: Image) -> list[list[str]]:
    """Run ``image``'s bootstrap with fake uv/apt-get as root; returns each call's argv."""
    work = Path(tempfile.mkdtemp(prefix="skyward-quoting-"))
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("uv", FAKE_UV),
        ("apt-get", FAKE_EXE.replace("{name}", "apt-get")),
        ("id", "#!/bin/sh\necho 0\n"),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    argv_log = work / "argv"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(work / "home"),
        "SKYWARD_HOME": str(work / "sky"),
        "FAKE_ARGV": str(argv_log),
    }
    result = subprocess.run(
        ["sh", "-s"], input=image.bootstrap(), env=env, capture_output=True, text=True,
        cwd=work, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = argv_log.read_bytes().decode().splitlines() if argv_log.exists() else []
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return [line.split("\0") for line in lines]


def _image(**options: object) -> Image | None:
    try:
        return Image(**options)  # type: ignore[arg-type]
    except ConfigurationError:
        return None  # refused: it never reaches a shell


@pytest.fixture(autouse=True)
def _no_canary() -> None:
    Path(CANARY).unlink(missing_ok=True)


@QUICK
@given(pip=st.lists(TEXT, min_size=1, max_size=3), index=st.one_of(st.none(), TEXT))
@example(pip=INJECTIONS[:5], index=None)
@example(pip=["six"], index=f"https://example.org/s?a=1&b=$(touch {CANARY})")
def test_pip_entries_and_the_index_url_arrive_verbatim(pip: list[str], index: str | None) -> None:
    image = _image(pip=pip, pip_extra_index_url=index)
    if image is None:
        return
    calls = run_bootstrap(image)
    install = next(call for call in calls if call[:3] == ["uv", "pip", "install"])
    assert install[-len(pip) :] == pip
    if index is not None:
        assert install[install.index("--extra-index-url") + 1] == index
    assert not Path(CANARY).exists()


@QUICK
@given(apt=st.lists(TEXT, min_size=1, max_size=3))
@example(apt=["ffmpeg", f"x;touch {CANARY}"])
def test_apt_names_arrive_verbatim(apt: list[str]) -> None:
    image = _image(apt=apt)
    if image is None:
        return
    calls = run_bootstrap(image)
    install = next(call for call in calls if call[0] == "apt-get" and "install" in call)
    assert sorted(install[install.index("-y") + 1 :]) == sorted(image.apt)
    assert not Path(CANARY).exists()


@QUICK
@given(username=TEXT)
@example(username=f"x$(touch {CANARY})")
def test_user_data_login_names_are_quoted(
    username: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    identity = NodeIdentity.for_pool(1, "sky-quoting")[0]
    script = user_data_script(identity, username=username, ttl_seconds=0)
    root = tmp_path_factory.mktemp("root")
    env = {"SKYWARD_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-s"], input=script, text=True, env=env, check=True, capture_output=True)
    home = "root" if username == "root" else f"home/{username}"
    authorized = root / home / ".ssh" / "authorized_keys"
    if ".." not in username.split("/"):
        assert identity.client.public_line in authorized.read_text()
    assert not Path(CANARY).exists()
