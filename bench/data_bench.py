"""Benchmark 6: streams, ``sky.put`` and functions sent once, on ``Local``.

One driver holds a warm Local pool and answers three operations, each measuring Skyward
against the way a user would do the same thing without the feature, in the same round:

- ``stream``: a generator of ``n`` small items (``def f(): yield ...``) against the same
  items returned as one list; items per second;
- ``put``: an array used by ``calls`` calls through ``sky.put`` against passing it with
  each call; bytes the client wrote and wall time;
- ``function_once``: the round trip of a no-op and of a function that reads a 64 KiB
  global, with the function sent once per node against sent by value with every call
  (``skyward.messages.SEND_FUNCTIONS_ONCE``; reported as not measured when the switch is
  gone).

``bench/stream_and_put.py`` and ``bench/function_once.py`` run the same code by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import DriverError, Summary, start_drivers, stop_drivers

MiB = 2**20
TABLE = bytes(range(256)) * 256  # 64 KiB a notebook's function might read as a global


def _items(n: int) -> Iterator[int]:
    yield from range(n)


def _as_list(n: int) -> list[int]:
    return list(range(n))


def _total(array: Any) -> float:
    return float(array[::4096].sum())


def _noop() -> None:
    return None


def _uses_table() -> int:
    return TABLE[0]


class SkywardData:
    """The driver's tool (``bench.tools.KINDS['skyward-data']``)."""

    def setup(self, **_: Any) -> None:
        import skyward as sky

        self.sky = sky
        self.items = sky.compute(_items)
        self.as_list = sky.compute(_as_list)
        self.total = sky.compute(_total)
        self.noop = sky.compute(_noop)
        self.uses_table = sky.compute(_uses_table)
        self.pool = sky.ComputePool(provider=sky.Local(), display="quiet", collect_metrics=False)
        self.pool.open()
        for _ in range(50):
            self.noop() >> self.pool
        self._array: Any = None

    def _sent(self) -> int | None:
        clients = getattr(getattr(self.pool, "_cluster", None), "clients", None) or []
        counts = [getattr(c, "bytes_sent", None) for c in clients]
        return None if not counts or None in counts else int(sum(counts))  # type: ignore[arg-type]

    def stream(self, n: int) -> dict[str, float]:
        start = time.perf_counter()
        count = sum(1 for _ in self.items(n) >> self.pool)
        streamed = time.perf_counter() - start
        assert count == n, count
        start = time.perf_counter()
        got = self.as_list(n) >> self.pool
        listed = time.perf_counter() - start
        assert len(got) == n
        return {"stream_items_s": n / streamed, "list_items_s": n / listed}

    def put(self, nbytes: int, calls: int) -> dict[str, float | None]:
        import numpy as np

        sky = self.sky
        if self._array is None or self._array.nbytes != nbytes:
            self._array = np.ones(nbytes // 8)
        array = self._array
        before, start = self._sent(), time.perf_counter()
        sky.gather(*(self.total(array) for _ in range(calls))) >> self.pool
        each_s, after = time.perf_counter() - start, self._sent()
        each = None if before is None or after is None else after - before
        before, start = self._sent(), time.perf_counter()
        ref = sky.put(array)
        sky.gather(*(self.total(ref) for _ in range(calls))) >> self.pool
        once_s, after = time.perf_counter() - start, self._sent()
        once = None if before is None or after is None else after - before
        ref.release()
        return {"each_s": each_s, "each_bytes": each, "put_s": once_s, "put_bytes": once}

    def function_once(self, calls: int) -> dict[str, float | None]:
        from skyward import messages

        has_switch = hasattr(messages, "SEND_FUNCTIONS_ONCE")
        out: dict[str, float | None] = {}
        for name, fn in (("noop", self.noop), ("table", self.uses_table)):
            for mode in (True, False):
                key = f"{name}_{'once' if mode else 'by_value'}_us"
                if not mode and not has_switch:
                    out[key] = None
                    continue
                if has_switch:
                    messages.SEND_FUNCTIONS_ONCE = mode  # type: ignore[attr-defined]
                for _ in range(20):
                    fn() >> self.pool  # warm this path
                start = time.perf_counter()
                for _ in range(calls):
                    fn() >> self.pool
                out[key] = (time.perf_counter() - start) / calls * 1e6
        if has_switch:
            messages.SEND_FUNCTIONS_ONCE = True  # type: ignore[attr-defined]
        return out

    def close(self) -> None:
        self.pool.close()


def data(settings: Any, hosts: list[Any], logs: Path) -> dict[str, Any]:
    quick = settings.quick
    n = 10_000 if quick else 100_000
    nbytes = (16 if quick else 256) * MiB
    calls = 10 if quick else 50
    fn_calls = 200 if quick else 2000
    rounds = 2 if quick else 5
    drivers, failed = start_drivers([("skyward-data", "skyward-data", {})], logs / "data")
    samples: dict[str, list[float]] = {}
    try:
        if "skyward-data" in drivers:
            driver = drivers["skyward-data"]
            try:
                for _ in range(rounds):
                    got: dict[str, Any] = {}
                    got.update(driver.call("stream", n=n))
                    got.update(driver.call("function_once", calls=fn_calls))
                    got.update(driver.call("put", timeout=1800, nbytes=nbytes, calls=calls))
                    for key, value in got.items():
                        if value is not None:
                            samples.setdefault(key, []).append(float(value))
            except DriverError as error:
                failed["skyward-data"] = str(error).strip().splitlines()[-1][:300]
    finally:
        stop_drivers(drivers)
    return {
        "failed": failed,
        "figures": {k: Summary.of(v).as_dict() for k, v in samples.items()},
        "items": n,
        "bytes": nbytes,
        "calls": calls,
        "fn_calls": fn_calls,
        "rounds": rounds,
    }


def render_data(result: dict[str, Any], data: dict[str, Any]) -> list[str]:
    from bench.report import NONE, num, ratio, table

    fig = result.get("figures", {})

    def med(key: str) -> float | None:
        value = fig.get(key, {}).get("median")
        return None if value is None else float(value)

    def rel(a: float | None, b: float | None) -> str:
        return NONE if a is None or b is None or b == 0 else ratio(a / b)

    def mib(value: float | None) -> str:
        return NONE if value is None else f"{value / MiB:,.1f} MiB"

    n, calls, size = result["items"], result["calls"], result["bytes"] // MiB
    stream, listed = med("stream_items_s"), med("list_items_s")
    rows = [
        [
            f"generator of {n:,} ints, items/s",
            num(stream),
            f"one list of {n:,}: {num(listed)}",
            rel(stream, listed),
        ],
        [
            f"{size} MiB array used by {calls} calls: client bytes sent",
            mib(med("put_bytes")),
            f"passed each call: {mib(med('each_bytes'))}",
            rel(med("put_bytes"), med("each_bytes")),
        ],
        [
            f"{size} MiB array used by {calls} calls: wall s",
            num(med("put_s"), "s"),
            f"passed each call: {num(med('each_s'), 's')}",
            rel(med("put_s"), med("each_s")),
        ],
    ]
    for name, label in (("noop", "no-op"), ("table", "function reading a 64 KiB global")):
        once, by_value = med(f"{name}_once_us"), med(f"{name}_by_value_us")
        rows.append(
            [
                f"round trip, {label}, µs (function sent once per node)",
                num(once),
                f"sent by value each call: {num(by_value)}",
                rel(once, by_value),
            ]
        )
    lines = [
        f"One warm `Local` pool (one node, process workers), {result['rounds']} rounds; each "
        "row against the way to do the same without the feature, measured in the same round "
        "(medians). *Ratio* is Skyward's figure over the baseline's: above 1 is better for "
        "items/s, below 1 is better for bytes, seconds and µs. Bytes are what the client "
        "wrote to the node's connection (`NodeClient.bytes_sent`).",
        "",
    ]
    lines += table(["measured", "Skyward", "baseline", "ratio"], rows)
    return lines
