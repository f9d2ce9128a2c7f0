"""MIG: how many instances of a profile fit one GPU, and the bootstrap step that makes them.

A pool that asks for ``AcceleratorSpec.NVIDIA.A100(mig="3g.40gb")`` selects machines with
A100s; this built-in plugin (registered like any other, through ``bootstrap_steps``) adds
the step that partitions their GPUs before the agent starts. On each GPU that can do MIG:

1. MIG mode on (``nvidia-smi -i N -mig 1``); when the driver leaves it pending, one GPU
   reset (``nvidia-smi -i N -r``); still pending fails the bootstrap, saying so;
2. the profile's GPU instances, each with its default compute instance
   (``nvidia-smi mig -i N -cgi ID,ID -C``, the ID read from ``nvidia-smi mig -i N -lgip``),
   as many as fit one GPU (:func:`mig_instances_per_gpu`), less those already there.

Re-running it on a partitioned GPU changes nothing (it prints ``::skyward:cached mig``).
A GPU already partitioned into other profiles is not touched: the step fails and names
them, since destroying instances could kill someone's work. GPUs that cannot do MIG
(``mig.mode.current`` is ``[N/A]``) are skipped. The agent then pins one worker to each
MIG instance by its UUID (:func:`skyward.gpus.plan_workers`).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from attrs import evolve

from skyward.accelerators import AcceleratorSpec, parse_accelerator
from skyward.errors import ConfigurationError
from skyward.hookspecs import hookimpl
from skyward.image import BootstrapStep

if TYPE_CHECKING:
    from skyward.image import Image
    from skyward.spec import ComputeSpec

__all__ = ["MIG_STEP_NAME", "bootstrap_steps", "mig_instances_per_gpu", "mig_step"]

MIG_STEP_NAME = "mig"

# Runs in the bootstrap's `set -eu` subshell. `$SKYWARD_NVIDIA_SMI` names another
# nvidia-smi (the tests' fake); commands that change the GPU go through `sudo -n` when
# the bootstrap is not root. The `-L` listing is what the agent plans workers from, so
# counting instances there counts exactly what workers will get.
_SCRIPT = """\
if [ "$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1; then SUDO=; else SUDO="sudo -n"; fi
smi=${SKYWARD_NVIDIA_SMI:-nvidia-smi}
profile=@PROFILE@
want=@WANT@
if ! command -v "$smi" >/dev/null 2>&1; then
  echo "skyward: MIG profile $profile was asked for, but nvidia-smi is not installed" >&2
  exit 1
fi
_sky_mig_mode() {
  "$smi" -i "$1" --query-gpu=mig.mode.current --format=csv,noheader </dev/null | tr -d ' '
}
if ! indices=$("$smi" --query-gpu=index --format=csv,noheader </dev/null 2>&1); then
  echo "skyward: MIG profile $profile was asked for, but nvidia-smi fails: $indices" >&2
  exit 1
fi
changed=0
capable=0
for i in $indices; do
  mode=$(_sky_mig_mode "$i")
  case $mode in
    Enabled) ;;
    Disabled)
      $SUDO "$smi" -i "$i" -mig 1 </dev/null
      mode=$(_sky_mig_mode "$i")
      if [ "$mode" != Enabled ]; then
        $SUDO "$smi" -i "$i" -r </dev/null || true
        mode=$(_sky_mig_mode "$i")
      fi
      if [ "$mode" != Enabled ]; then
        echo "skyward: MIG mode on GPU $i is still '$mode' after a reset; reboot the" \\
          "machine or stop what holds the GPU" >&2
        exit 1
      fi
      changed=1
      ;;
    *) continue ;;
  esac
  capable=$((capable + 1))
  counts=$("$smi" -L </dev/null | awk -v gpu="$i" -v p="$profile" '
    /^GPU [0-9]+:/ { current = $2; sub(/:$/, "", current); next }
    current == gpu && $1 == "MIG" { if ($2 == p) have++; else { other++; names = names " " $2 } }
    END { printf "%d %d%s\\n", have, other, names }')
  set -- $counts
  have=$1
  other=$2
  shift 2
  if [ "$other" != 0 ]; then
    echo "skyward: GPU $i is already partitioned into other MIG profiles ($*), not" \\
      "$profile; remove them (nvidia-smi mig -i $i -dci; nvidia-smi mig -i $i -dgi)" >&2
    exit 1
  fi
  if [ "$have" -lt "$want" ]; then
    id=$("$smi" mig -i "$i" -lgip </dev/null | awk -v p="$profile" '
      $1 == "|" && $3 == "MIG" && $4 == p { print $5; exit }')
    if [ -z "$id" ]; then
      echo "skyward: GPU $i has no MIG profile $profile (see nvidia-smi mig -i $i -lgip)" >&2
      exit 1
    fi
    ids=$id
    n=$((have + 1))
    while [ "$n" -lt "$want" ]; do ids="$ids,$id"; n=$((n + 1)); done
    $SUDO "$smi" mig -i "$i" -cgi "$ids" -C </dev/null
    changed=1
  fi
done
if [ "$capable" = 0 ]; then
  echo "skyward: MIG profile $profile was asked for, but no GPU here can do MIG" >&2
  exit 1
fi
[ "$changed" = 1 ] || echo "::skyward:cached mig"
"""


def mig_instances_per_gpu(accelerator: str | AcceleratorSpec, profile: str | None = None) -> int:
    """How many instances of a MIG profile fit one GPU (the catalog's MIG tables).

    >>> mig_instances_per_gpu(AcceleratorSpec.NVIDIA.A100(mig="3g.40gb"))
    2
    >>> mig_instances_per_gpu("A100-40GB", "1g.5gb")
    7

    :param accelerator: a spec with ``mig`` set, or an accelerator name (``"A100"``,
        ``"A100-40GB"``) with ``profile``.
    :raises ConfigurationError: when the accelerator has no such profile.
    """
    spec = parse_accelerator(accelerator)
    if profile is not None:
        spec = evolve(spec, mig=profile)
    if spec.mig is None:
        raise ConfigurationError(
            "accelerator",
            f"{spec} names no MIG profile",
            'Pass profile="3g.40gb" or a spec built with mig="3g.40gb"',
        )
    return spec.mig_workers


def mig_step(accelerator: AcceleratorSpec) -> BootstrapStep:
    """The bootstrap step that partitions every MIG-capable GPU of a node for
    ``accelerator.mig`` (see the module's docstring for what it does)."""
    if accelerator.mig is None:
        raise ConfigurationError(
            "accelerator", f"{accelerator} names no MIG profile", 'Use mig="3g.40gb"'
        )
    script = _SCRIPT.replace("@PROFILE@", shlex.quote(accelerator.mig)).replace(
        "@WANT@", str(mig_instances_per_gpu(accelerator))
    )
    # After "uv": it needs no Python, and a node that cannot be partitioned fails early.
    return BootstrapStep(name=MIG_STEP_NAME, script=script, after="uv")


@hookimpl
def bootstrap_steps(image: Image, spec: ComputeSpec | None) -> list[BootstrapStep]:
    """The MIG step, for pools that ask for a MIG profile."""
    if spec is None or spec.accelerator is None or spec.accelerator.mig is None:
        return []
    return [mig_step(spec.accelerator)]
