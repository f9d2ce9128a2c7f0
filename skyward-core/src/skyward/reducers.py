"""Out-of-band reducers for array types that pickle their memory in-band by default.

A torch tensor's own ``__reduce_ex__`` copies its storage into the pickle (through
``torch.save``'s machinery), which caps a 1 GiB tensor at a few hundred MiB/s. Here a
tensor pickles as its dtype, shape and one pickle-5 out-of-band buffer over its memory
(no copy for a contiguous CPU tensor), which the frame sends as it is and the receiver
wraps without copying (``torch.frombuffer``). A CUDA tensor goes through host memory and
comes back on the same device index when the receiving process has that GPU; otherwise
it arrives on the CPU, with a warning that says so.

The reducers live in Skyward's own pickler (a per-pickler dispatch table), never in
``copyreg``: the user's ``torch.save`` and ``pickle.dumps`` keep their formats. Torch is
never imported here unless the user already did (``skyward.wire`` asks once it sees it in
``sys.modules``); the receiving side imports it to rebuild, as unpickling a tensor would.
"""

from __future__ import annotations

import array
import pickle
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["table"]

Reducer = Callable[[Any], tuple[Any, ...]]

_table: dict[type, Reducer] = {}
_torch_added = False


def table() -> dict[type, Reducer]:
    """Types → reducers for the modules imported so far (torch once it is imported)."""
    global _torch_added
    if not _torch_added and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if hasattr(torch, "Tensor"):  # a module still importing has no Tensor yet
            _table[torch.Tensor] = _reduce_tensor
            _torch_added = True
    return _table


def torch_ready() -> bool:
    return _torch_added


# -- array.array ----------------------------------------------------------------------------


def _reduce_array(value: array.array[Any]) -> tuple[Any, ...]:
    return (_rebuild_array, (value.typecode, pickle.PickleBuffer(value)))


def _rebuild_array(typecode: str, buffer: Any) -> array.array[Any]:
    out = array.array(typecode)
    out.frombytes(memoryview(buffer).cast("B"))
    return out


_table[array.array] = _reduce_array


# -- torch ----------------------------------------------------------------------------------


def _reduce_tensor(tensor: Any) -> tuple[Any, ...]:
    torch = sys.modules["torch"]
    default = not (
        type(tensor) is torch.Tensor
        and tensor.layout == torch.strided
        and tensor.device.type in ("cpu", "cuda")
        and not tensor.is_quantized
        and not tensor.is_nested
        and not tensor.is_conj()
        and not tensor.is_neg()
        and (tensor.is_leaf or not tensor.requires_grad)
        and "numpy" in sys.modules  # the buffer is a numpy view of the memory
    )
    if default:
        # Subclasses (``nn.Parameter``), sparse, quantized and other exotic tensors keep
        # torch's own reduction.
        reduced: tuple[Any, ...] = tensor.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return reduced
    device = tensor.device.index if tensor.device.type == "cuda" else None
    if device is not None and tensor.device.index is None:
        device = torch.cuda.current_device()
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(-1)
    if flat.numel():
        # Bytes, whatever the dtype (bfloat16 and others have no numpy type).
        memory: Any = pickle.PickleBuffer(flat.view(torch.uint8).numpy())
    else:
        memory = b""
    dtype = str(tensor.dtype).removeprefix("torch.")
    return (
        _rebuild_tensor,
        (memory, dtype, tuple(tensor.shape), bool(tensor.requires_grad), device),
    )


def _rebuild_tensor(
    memory: Any, dtype: str, shape: tuple[int, ...], requires_grad: bool, device: int | None
) -> Any:
    import torch

    kind = getattr(torch, dtype)
    view = memoryview(memory)
    if view.nbytes == 0:
        tensor = torch.empty(shape, dtype=kind)
    else:
        if view.readonly:
            # A sky.Ref's mapped file: torch has no read-only tensors, and an in-place
            # operation on read-only pages would kill the process (SIGSEGV). One copy per
            # process (refs are opened once per process).
            memory = bytearray(view)
        tensor = torch.frombuffer(memory, dtype=kind).reshape(shape)
    if device is not None:
        if torch.cuda.is_available() and device < torch.cuda.device_count():
            tensor = tensor.to(f"cuda:{device}")
        else:
            warnings.warn(
                f"skyward: a tensor sent from cuda:{device} arrives on the CPU: this process "
                "sees no such GPU",
                RuntimeWarning,
                stacklevel=2,
            )
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor
