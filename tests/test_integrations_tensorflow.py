"""@sky.integrations.tensorflow with TensorFlow itself: MultiWorkerMirroredStrategy across
a 2-node Local pool, in the separate cached TensorFlow environment (tests/tf_env.py).

Keras 3's fit under the strategy is broken upstream (keras-team/keras#20585), so the model
is trained with tf-keras (TF_USE_LEGACY_KERAS=1), as the README says."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.tf_env import ROOT, tensorflow_python


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_on_two_nodes() -> None:
    python = tensorflow_python()
    result = subprocess.run(
        [str(python), str(Path(__file__).with_name("tf_mwms_check.py"))],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    workers = json.loads(result.stdout.strip().splitlines()[-1])
    assert [w["index"] for w in workers] == [0, 1]
    assert {w["replicas"] for w in workers} == {2}
    assert {w["allreduce"] for w in workers} == {3.0}
    assert workers[0]["weights"] == workers[1]["weights"]
