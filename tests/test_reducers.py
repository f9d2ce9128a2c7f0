"""Tensors and other buffer-protocol arrays as out-of-band pickle buffers."""

from __future__ import annotations

import array
import io
import pickle
import subprocess
import sys
import warnings
from typing import Any

import pytest

from skyward import reducers, wire

torch = pytest.importorskip("torch")


def _round_trip(obj: object) -> object:
    data, buffers = wire.dumps(obj)
    # As the receiver gets them: its own writable memory.
    return wire.loads(data, [bytearray(b.raw()) for b in buffers])


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
        lambda: torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        lambda: torch.tensor([True, False, True]),
        lambda: torch.randn(3, 4, dtype=torch.complex64),
        lambda: torch.arange(12).reshape(3, 4).t(),  # not contiguous
        lambda: torch.arange(100)[10:20],  # a view into a bigger storage
        lambda: torch.tensor(3.0),  # zero dimensions
        lambda: torch.zeros(0, 5),
    ],
    ids=["float32-3d", "bfloat16", "bool", "complex", "transposed", "slice", "scalar", "empty"],
)
def test_tensors_round_trip(make: object) -> None:
    tensor = make()  # type: ignore[operator]
    got = _round_trip(tensor)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == tensor.dtype
    assert got.shape == tensor.shape
    assert torch.equal(got, tensor)


def test_a_tensor_travels_out_of_band_without_a_copy() -> None:
    tensor = torch.ones(1 << 20, dtype=torch.float32)
    data, buffers = wire.dumps(tensor)
    assert len(data) < 500, "the pickle holds only dtype and shape"
    assert [b.raw().nbytes for b in buffers] == [tensor.numel() * 4]
    raw = buffers[0].raw()
    tensor[0] = 7.0  # the buffer is the tensor's own memory, not a copy
    assert raw.cast("f")[0] == 7.0
    received = bytearray(raw)
    got = wire.loads(data, [received])
    got[1] = 5.0  # and the received tensor wraps the receive buffer
    assert memoryview(received).cast("f")[1] == 5.0


def test_only_the_slice_of_a_view_travels() -> None:
    big = torch.zeros(1_000_000)
    _, buffers = wire.dumps(big[:10])
    assert sum(b.raw().nbytes for b in buffers) == 40


def test_requires_grad_is_kept_and_parameters_keep_torchs_own_pickle() -> None:
    leaf = torch.ones(3, requires_grad=True)
    got = _round_trip(leaf)
    assert isinstance(got, torch.Tensor)
    assert got.requires_grad
    parameter = torch.nn.Parameter(torch.ones(2))
    got = _round_trip(parameter)
    assert type(got) is torch.nn.Parameter


def test_a_read_only_buffer_gives_a_writable_copy_without_warnings() -> None:
    tensor = torch.arange(10, dtype=torch.int64)
    data, buffers = wire.dumps(tensor)
    frozen = [memoryview(bytes(b.raw())) for b in buffers]  # a sky.Ref's mapped file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = wire.loads(data, frozen)
    assert torch.equal(got, tensor)
    got.add_(1)  # in place: on read-only pages this would be a segfault
    assert bytes(frozen[0]) == tensor.numpy().tobytes()


def test_a_cuda_tensor_without_that_gpu_arrives_on_the_cpu_with_a_warning() -> None:
    # What the sender's reducer produces for cuda:1, rebuilt where there is no GPU 1.
    memory = pickle.PickleBuffer(bytearray(torch.arange(4, dtype=torch.float32).numpy().tobytes()))
    with pytest.warns(RuntimeWarning, match="cuda:1 arrives on the CPU"):
        got = reducers._rebuild_tensor(memory, "float32", (4,), False, 1)
    assert got.device.type == "cpu"
    assert torch.equal(got, torch.arange(4, dtype=torch.float32))


def test_users_own_pickling_is_untouched() -> None:
    tensor = torch.arange(5)
    wire.dumps(tensor)  # Skyward's reducer is in use from here on
    assert torch.Tensor not in __import__("copyreg").dispatch_table
    restored = pickle.loads(pickle.dumps(tensor, protocol=2))
    assert torch.equal(restored, tensor)
    file = io.BytesIO()
    torch.save(tensor, file)
    file.seek(0)
    assert torch.equal(torch.load(file), tensor)


def test_array_array_travels_out_of_band() -> None:
    values = array.array("d", range(10_000))
    data, buffers = wire.dumps(values)
    assert len(buffers) == 1
    assert len(data) < 200
    assert _round_trip(values) == values


def test_skyward_never_imports_torch() -> None:
    code = (
        "import sys, skyward, numpy\n"
        "from skyward import messages, wire\n"
        "wire.dumps([numpy.ones(3), 1, 'x'])\n"
        "messages.Payload.of(numpy.ones(3))\n"
        "assert 'torch' not in sys.modules, 'skyward imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tensors_cross_a_local_pool_both_ways_and_as_refs(local_pool_factory: Any) -> None:
    import skyward as sky

    @sky.compute
    def double(t: Any) -> Any:
        return t * 2

    @sky.compute
    def bump(t: Any) -> float:
        t.add_(1)  # in place, on the node's own copy
        return float(t.sum())

    with local_pool_factory() as pool:
        tensor = torch.arange(1 << 16, dtype=torch.float32).reshape(256, 256)
        got = double(tensor) >> pool
        assert isinstance(got, torch.Tensor)
        assert torch.equal(got, tensor * 2)
        ref = sky.put(tensor)
        total = float(tensor.sum()) + tensor.numel()
        assert bump(ref) >> pool == total
        # A ref is opened once per process and shared by its calls (refs.py says to treat
        # it as read-only): a writable copy, so the second call sees the first one's bump.
        assert bump(ref) >> pool == total + tensor.numel()
