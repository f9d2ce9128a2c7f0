"""A separate, cached Python environment with TensorFlow for the TensorFlow integration tests.

TensorFlow's CPU wheel makes a 1.6 GB environment, so it stays out of the project's own
``.venv``. It is built once per version under ``~/.cache/skyward-tests/`` (outside the clone,
so CI reruns reuse it), under a file lock (parallel sessions build it once), and finished
with a marker file (an interrupted build is started again). Skyward itself is not installed
there from an index: this checkout's skyward-core and skyward-integrations are installed
editable (without dependencies) on every use, so the cache stays valid as the code changes.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

TENSORFLOW = "tensorflow-cpu==2.21.0"
TF_KERAS = "tf-keras==2.21.0"
ROOT = Path(__file__).resolve().parent.parent
_KEY = f"tensorflow-cpu-2.21.0-tf-keras-2.21.0-py{sys.version_info.major}{sys.version_info.minor}"


def _core_requirements() -> list[str]:
    # skyward-core's runtime dependencies at the versions of the test environment.
    names = ["attrs", "cloudpickle", "pluggy", "rich", "psutil"]
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def _uv() -> str:
    from skyward.providers.local_env import find_uv

    return find_uv()


def tensorflow_python() -> Path:
    """The interpreter of the TensorFlow environment, built first if needed."""
    base = Path.home() / ".cache" / "skyward-tests"
    env = base / _KEY
    python = env / "bin" / "python"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{_KEY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env / ".ready").exists():
            if env.exists():
                shutil.rmtree(env)
            uv = _uv()
            subprocess.run(
                [uv, "venv", "--quiet", "--python", sys.executable, str(env)], check=True
            )
            subprocess.run(
                [
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(python),
                    TENSORFLOW,
                    TF_KERAS,
                    *_core_requirements(),
                ],
                check=True,
            )
            (env / ".ready").write_text(_KEY + "\n")
        subprocess.run(
            [
                _uv(),
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(python),
                "-e",
                str(ROOT / "skyward-core"),
                "-e",
                str(ROOT / "skyward-integrations"),
            ],
            check=True,
        )
    return python


if __name__ == "__main__":
    print(tensorflow_python())
