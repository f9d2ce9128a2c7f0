"""A stateful fake of the DigitalOcean API v2, checked against DigitalOcean's own contract.

:class:`FakeDigitalOcean` serves ``http://127.0.0.1:<free port>`` from a thread
(werkzeug). Every request it receives and every response it sends is validated with
openapi-core against ``../shared/contracts/digitalocean-openapi.json`` (beside the
checkout, as CI lays it out), the document DigitalOcean publishes; a mismatch is recorded
in :attr:`FakeDigitalOcean.violations` (a request the real API would refuse is also
answered ``400 bad_request``), and the test fixture fails the test when any is left. Three
corrections are made in memory, never in the file (see ``shared/research/digitalocean.md``
§3): spec validation is skipped (one unrelated inference schema has ``default: null``
without ``nullable``), the ``ssh_key_identifier`` path parameter loses its ``readOnly``
(which would refuse every request for one key), and a loopback server is added next to
``https://api.digitalocean.com``.

What the schema cannot say, the fake enforces itself, as the API's prose does: at most
10 ``names`` per create, ``user_data`` up to 64 KiB, ``type``/``name`` not combined with
``tag_name``, firewall tags that exist, the account's droplet limit, sizes sold in the
region, SSH key ids that exist, one registration per public key. Droplets are born
``new`` with no networks, become ``active`` with only their private address, and get the
public one a little later (the ``active``-before-address race). GPU droplets are missing
from an untyped listing, as on the real API. Every answer carries the ``ratelimit-*``
headers; the burst limit (250/min) and the key-listing limit (10/60 s) answer 429 with
``retry-after``, the hourly limit (5,000) without it, ``ratelimit-reset`` saying when the
oldest request stops counting.

Knobs (attributes, reset by :meth:`FakeDigitalOcean.reset`): ``droplet_limit``,
``burst_limit``, ``hourly_limit``, ``boot_seconds`` / ``address_seconds`` (the two steps
of a droplet's boot), ``destroy_seconds`` (how long a destroyed droplet is still listed),
``listing_lag`` (a new droplet missing from listings for a while), ``read_only`` (a
read-scoped token: writes answer 403), ``gpus_in_tag_listing`` (whether ``tag_name``
listings include GPU droplets; the document does not say), ``sizes`` (the catalog).

Faults, for tests and the fault matrix (all one-shot and counted, cleared by
:meth:`FakeDigitalOcean.reset`):

- :meth:`fail_next` — answer an operation with an error status (``after=True``: only
  after doing the work, as a proxy that loses the answer would);
- :meth:`rate_limit_next` — a storm of 429s (with or without ``retry-after``);
- :meth:`partial_create` — the next create makes only some droplets, then answers 5xx;
- :meth:`ignore_destroy_next` — a destroy answered 204 that does not take effect;
- :meth:`sell_out` — a size refused for capacity (422), as GPU sizes often are.

For tests: the ``do_fake`` fixture (a fresh account, the environment pointing Skyward at
it, and a check that nothing broke the contract), :func:`pydo_client` (the official
client pointed at the fake), and :class:`CloudInit` (the connection hook that maps
droplets onto SSH test hosts after playing their user-data).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.loopback_server import Served

CONTRACT = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "contracts"
    / "digitalocean-openapi.json"
)
"""The published contract, kept once in shared/ beside the repository (CI has it too)."""
TOKEN = "dop_v1_fake_token_for_tests"
MAX_NAMES = 10
MAX_USER_DATA = 64 * 1024
HOURLY_LIMIT = 5000
BURST_LIMIT = 250
KEY_LIST_LIMIT = 10
METADATA_PREFIX = "/metadata/v1/"


@functools.cache
def contract() -> Any:
    """The document as openapi-core's ``OpenAPI`` object, with the three in-memory fixes."""
    from openapi_core import Config, OpenAPI

    spec = json.loads(CONTRACT.read_text())
    spec["components"]["parameters"]["ssh_key_identifier"]["schema"] = {
        "anyOf": [{"type": "integer"}, {"type": "string"}]
    }
    spec["servers"] = [
        {"url": "http://127.0.0.1:{port}", "variables": {"port": {"default": "80"}}},
        *spec["servers"],
    ]
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


# --------------------------------------------------------------------------------------
# the catalog the fake sells
# --------------------------------------------------------------------------------------

_IMAGE_REGIONS = ["ams3", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "tor1"]
REGIONS = {
    "nyc1": "New York 1",
    "nyc3": "New York 3",
    "sfo3": "San Francisco 3",
    "ams3": "Amsterdam 3",
    "fra1": "Frankfurt 1",
    "lon1": "London 1",
    "sgp1": "Singapore 1",
    "tor1": "Toronto 1",
}
_CPU_REGIONS = list(REGIONS)


def _size(
    slug: str,
    vcpus: int,
    memory_mb: int,
    disk: int,
    hourly: float,
    regions: list[str],
    description: str,
    gpu: tuple[str, int, int] | None = None,
) -> dict[str, Any]:
    size: dict[str, Any] = {
        "slug": slug,
        "memory": memory_mb,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": 4.0,
        "price_monthly": round(hourly * 672, 2),
        "price_hourly": hourly,
        "regions": regions,
        "available": True,
        "description": description,
        "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}],
    }
    if gpu is not None:
        model, count, vram = gpu
        size["gpu_info"] = {"count": count, "model": model, "vram": {"amount": vram, "unit": "gib"}}
        size["disk_info"].append({"type": "scratch", "size": {"amount": 5120, "unit": "gib"}})
    return size


def default_sizes() -> list[dict[str, Any]]:
    """Sizes like DigitalOcean's: basic, CPU-optimized, and GPU droplets in a few regions."""
    sizes = [
        _size("s-1vcpu-1gb", 1, 1024, 25, 0.00893, _CPU_REGIONS, "Basic"),
        _size("s-1vcpu-2gb", 1, 2048, 50, 0.01786, _CPU_REGIONS, "Basic"),
        _size("s-2vcpu-2gb", 2, 2048, 60, 0.02679, _CPU_REGIONS, "Basic"),
        _size("s-2vcpu-4gb", 2, 4096, 80, 0.03571, _CPU_REGIONS, "Basic"),
        _size("s-4vcpu-8gb", 4, 8192, 160, 0.07143, _CPU_REGIONS, "Basic"),
        _size("s-8vcpu-16gb", 8, 16384, 320, 0.14286, _CPU_REGIONS, "Basic"),
        _size("c-2", 2, 4096, 25, 0.0625, _CPU_REGIONS, "CPU-Optimized"),
        _size("c-4", 4, 8192, 50, 0.125, _CPU_REGIONS, "CPU-Optimized"),
        _size("c-8", 8, 16384, 100, 0.25, _CPU_REGIONS, "CPU-Optimized"),
        _size("c-32", 32, 65536, 400, 1.0, _CPU_REGIONS, "CPU-Optimized"),
        _size("m-16vcpu-128gb", 16, 131072, 400, 1.0, ["nyc1", "nyc3", "sfo3"], "Memory-Optimized"),
        _size(
            "gpu-h100x1-80gb",
            20,
            245760,
            720,
            3.39,
            ["nyc1", "tor1"],
            "H100 GPU - 1X",
            gpu=("nvidia_h100", 1, 80),
        ),
        _size(
            "gpu-h100x8-640gb",
            160,
            1966080,
            2046,
            23.92,
            ["nyc1", "tor1"],
            "H100 GPU - 8X",
            gpu=("nvidia_h100", 8, 80),
        ),
        _size(
            "gpu-l40sx1-48gb",
            8,
            65536,
            500,
            1.57,
            ["tor1"],
            "L40S GPU - 1X",
            gpu=("nvidia_l40s", 1, 48),
        ),
        _size(
            "gpu-mi300x1-192gb",
            20,
            245760,
            720,
            1.99,
            ["tor1"],
            "AMD MI300X - 1X",
            gpu=("amd_mi300x", 1, 192),
        ),
    ]
    # More than one page at the largest page size a client may ask for (200), so a
    # provider that reads only the first page misses sizes.
    for index in range(200):
        sizes.append(
            _size(f"so-legacy-{index}", 2, 16384, 50, 0.5, ["nyc3"], "Storage-Optimized (legacy)")
        )
    return sizes


def _image(slug: str, name: str, distribution: str) -> dict[str, Any]:
    return {
        "id": 100000 + zlib.crc32(slug.encode()) % 900000,
        "name": name,
        "distribution": distribution,
        "slug": slug,
        "public": True,
        "regions": _IMAGE_REGIONS,
        "created_at": "2025-04-24T12:00:00Z",
        "type": "base",
        "min_disk_size": 15,
        "size_gigabytes": 2.5,
        "description": name,
        "tags": [],
        "status": "available",
        "error_message": "",
    }


IMAGES = {
    "ubuntu-24-04-x64": _image("ubuntu-24-04-x64", "24.04 (LTS) x64", "Ubuntu"),
    "ubuntu-22-04-x64": _image("ubuntu-22-04-x64", "22.04 (LTS) x64", "Ubuntu"),
    "gpu-h100x1-base": _image("gpu-h100x1-base", "AI/ML Ready (H100x1)", "Ubuntu"),
    "gpu-h100x8-base": _image("gpu-h100x8-base", "AI/ML Ready (H100x8)", "Ubuntu"),
    "gpu-amd-base": _image("gpu-amd-base", "AI/ML Ready (AMD)", "Ubuntu"),
}


# --------------------------------------------------------------------------------------
# records and faults
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request that reached the fake, and how it was answered."""

    operation: str
    """The contract's operationId (``droplets_create``)."""
    method: str
    path: str
    query: dict[str, str]
    status: int
    body: Any = field(default=None, compare=False, repr=False)


@dataclass
class _Fault:
    operation: str
    status: int
    remaining: int
    after: bool = False
    retry_after: int | None = None


@dataclass
class Droplet:
    id: int
    name: str
    size: dict[str, Any]
    region: str
    image: str
    tags: list[str]
    user_data: str
    ssh_keys: list[Any]
    vpc_uuid: str
    created: float
    private_ip: str
    public_ip: str
    gone_at: float | None = None


class FakeDigitalOcean:
    """The DigitalOcean API for one account, with faults on demand."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._served: Served | None = None
        self.url = ""
        self.token = TOKEN
        self.reset()
        self._map = Map(
            [
                Rule("/v2/account", endpoint="account_get", methods=["GET"]),
                Rule("/v2/sizes", endpoint="sizes_list", methods=["GET"]),
                Rule("/v2/regions", endpoint="regions_list", methods=["GET"]),
                Rule("/v2/vpcs", endpoint="vpcs_list", methods=["GET"]),
                Rule("/v2/droplets", endpoint="droplets_list", methods=["GET"]),
                Rule("/v2/droplets", endpoint="droplets_create", methods=["POST"]),
                Rule("/v2/droplets", endpoint="droplets_destroy_byTag", methods=["DELETE"]),
                Rule("/v2/droplets/<int:droplet_id>", endpoint="droplets_get", methods=["GET"]),
                Rule(
                    "/v2/droplets/<int:droplet_id>",
                    endpoint="droplets_destroy",
                    methods=["DELETE"],
                ),
                Rule("/v2/account/keys", endpoint="sshKeys_list", methods=["GET"]),
                Rule("/v2/account/keys", endpoint="sshKeys_create", methods=["POST"]),
                Rule("/v2/account/keys/<key>", endpoint="sshKeys_get", methods=["GET"]),
                Rule("/v2/account/keys/<key>", endpoint="sshKeys_delete", methods=["DELETE"]),
                Rule("/v2/tags", endpoint="tags_list", methods=["GET"]),
                Rule("/v2/tags", endpoint="tags_create", methods=["POST"]),
                Rule("/v2/tags/<tag>", endpoint="tags_get", methods=["GET"]),
                Rule("/v2/tags/<tag>", endpoint="tags_delete", methods=["DELETE"]),
                Rule("/v2/firewalls", endpoint="firewalls_list", methods=["GET"]),
                Rule("/v2/firewalls", endpoint="firewalls_create", methods=["POST"]),
                Rule("/v2/firewalls/<fid>", endpoint="firewalls_get", methods=["GET"]),
                Rule("/v2/firewalls/<fid>", endpoint="firewalls_delete", methods=["DELETE"]),
            ]
        )

    # -- life -------------------------------------------------------------------------

    def start(self) -> Self:
        contract()  # load before the first request, not during it
        server = make_server(
            "127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler
        )
        self._served = Served(server, "fake-digitalocean")
        self.url = f"http://127.0.0.1:{self._served.port}"
        return self

    def stop(self) -> None:
        if self._served is not None:
            self._served.close()
            self._served = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """A fresh account: the default catalog, no droplets, keys, tags or firewalls."""
        with self._lock:
            self.sizes = default_sizes()
            self.droplet_limit = 25
            self.burst_limit = BURST_LIMIT
            self.hourly_limit = HOURLY_LIMIT
            """Requests per hour before 429 without retry-after (DigitalOcean: 5,000)."""
            """Requests per minute before 429 (DigitalOcean: 250)."""
            self.boot_seconds = 0.3
            """``new`` → ``active`` (private address only)."""
            self.address_seconds = 0.3
            """``active`` → public address assigned."""
            self.gpus_in_tag_listing = True
            """Whether ``tag_name`` listings include GPU droplets (the document does not say;
            ``False`` models the pessimistic reading)."""
            self.read_only = False
            """The token has read scope only: writes answer 403."""
            self.listing_lag = 0.0
            """Seconds before a new droplet shows in listings (``get`` finds it at once)."""
            self.destroy_seconds = 0.2
            """How long a destroyed droplet is still listed."""
            self.droplets: dict[int, Droplet] = {}
            self.keys: dict[int, dict[str, Any]] = {}
            self.tags: set[str] = set()
            self.firewalls: dict[str, dict[str, Any]] = {}
            self.calls: list[Call] = []
            self.violations: list[str] = []
            self._faults: list[_Fault] = []
            self._partial: list[tuple[int, int]] = []
            self._limit_after_partial = False
            self._ignore_destroys = 0
            self._sold_out: set[str] = set()
            self._requests: deque[float] = deque()
            self._key_lists: deque[float] = deque()
            self._ids = itertools.count(350000001)
            self._key_ids = itertools.count(512190)
            self._ips = itertools.count(10)
            self.vpc = {
                region: str(uuid.uuid5(uuid.NAMESPACE_DNS, f"default-vpc-{region}"))
                for region in REGIONS
            }

    # -- fault injection --------------------------------------------------------------

    def fail_next(
        self,
        operation: str,
        status: int = 500,
        times: int = 1,
        *,
        after: bool = False,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` (``"*"``: any) with ``status``;
        ``after=True`` does the work first and loses the answer (the 5xx-after-create)."""
        with self._lock:
            self._faults.append(_Fault(operation, status, times, after, retry_after))

    def rate_limit_next(
        self, times: int, *, operation: str = "*", retry_after: int | None = 1
    ) -> None:
        """A storm of ``times`` 429s (``retry_after=None``: the hourly kind, no header)."""
        self.fail_next(operation, 429, times, retry_after=retry_after)

    def partial_create(self, made: int, status: int = 500, *, limit_reached: bool = False) -> None:
        """The next create makes only its first ``made`` droplets, then answers ``status``;
        ``limit_reached``: the account's droplet limit is then used up (another client of
        the account took the other slots), so later creates are refused with 422."""
        with self._lock:
            self._partial.append((made, status))
            self._limit_after_partial = limit_reached

    def ignore_destroy_next(self, times: int = 1) -> None:
        """The next destroys answer 204 but the droplet stays (DO has done this to ``new``
        droplets)."""
        with self._lock:
            self._ignore_destroys += times

    def sell_out(self, *slugs: str) -> None:
        """Creating these sizes fails for capacity (422), as an empty GPU region does."""
        with self._lock:
            self._sold_out.update(slugs)

    # -- what a test reads ------------------------------------------------------------

    def user_data(self, droplet_id: int | str) -> str:
        """What the droplet's metadata service would hand cloud-init."""
        with self._lock:
            return self.droplets[int(droplet_id)].user_data

    def live(self, tag: str | None = None) -> list[Droplet]:
        """Droplets that exist (any status), optionally with a tag."""
        now = time.monotonic()
        with self._lock:
            return [
                d
                for d in self.droplets.values()
                if (d.gone_at is None or d.gone_at > now) and (tag is None or tag in d.tags)
            ]

    def operations(self) -> list[str]:
        with self._lock:
            return [c.operation for c in self.calls]

    def firewalls_tagged(self, tag: str) -> list[dict[str, Any]]:
        with self._lock:
            return [f for f in self.firewalls.values() if tag in f["tags"]]

    # -- serving ----------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith(METADATA_PREFIX):
            response = self._metadata(request)
        else:
            response = self._answer(request)
        return response(environ, start_response)

    def _metadata(self, request: Request) -> Response:
        """``/metadata/v1/<droplet id>/user-data``: what a droplet's metadata service
        (169.254.169.254, no token) hands cloud-init; for a test's cloud-init played in
        another process (the fault matrix's client program). Not part of API v2, so
        neither checked against the contract nor recorded in :attr:`calls`."""
        ident, _, item = request.path.removeprefix(METADATA_PREFIX).partition("/")
        with self._lock:
            droplet = self.droplets.get(int(ident)) if ident.isdigit() else None
            if droplet is None or item != "user-data":
                return Response("not found", status=404, mimetype="text/plain")
            return Response(droplet.user_data, status=200, mimetype="text/plain")

    def _answer(self, request: Request) -> Response:
        from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse

        request.get_data(cache=True)
        try:
            endpoint, args = self._map.bind_to_environ(request.environ).match()
        except (NotFound, MethodNotAllowed):
            endpoint, args = "unknown", {}
        checked = WerkzeugOpenAPIRequest(request)
        try:
            contract().validate_request(checked)
            valid = True
        except Exception as error:
            valid = False
            cause = getattr(error.__cause__, "schema_errors", None)
            detail = "; ".join(e.message for e in cause) if cause else str(error.__cause__ or "")
            self._violation(f"request {request.method} {request.full_path}: {error!r} {detail}")
        response = self._handle(request, endpoint, args, valid)
        try:
            contract().validate_response(checked, WerkzeugOpenAPIResponse(response))
        except Exception as error:
            cause = getattr(error.__cause__, "schema_errors", None)
            detail = "; ".join(e.message for e in cause) if cause else str(error.__cause__ or "")
            self._violation(
                f"response {response.status_code} to {request.method} {request.full_path}: "
                f"{error!r} {detail}"
            )
        return response

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _handle(
        self, request: Request, endpoint: str, args: dict[str, Any], valid: bool
    ) -> Response:
        query = dict(request.args.items())
        body: Any = None
        if request.get_data():
            try:
                body = json.loads(request.get_data())
            except ValueError:
                body = None

        def record(response: Response) -> Response:
            with self._lock:
                self.calls.append(
                    Call(endpoint, request.method, request.path, query, response.status_code, body)
                )
            return response

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return record(self._error(401, "unauthorized", "Unable to authenticate you"))
        if not valid:
            return record(self._error(400, "bad_request", "The request is invalid."))
        if self.read_only and request.method in ("POST", "PUT", "DELETE"):
            return record(
                self._error(403, "forbidden", "You are not authorized to perform this operation")
            )
        limited = self._rate_limited(endpoint)
        if limited is not None:
            return record(limited)
        fault = self._take_fault(endpoint)
        if fault is not None and not fault.after:
            return record(self._fault_response(fault))
        try:
            handler = getattr(self, f"_op_{endpoint}")
            status, document = handler(query=query, body=body, **args)
        except _ApiError as error:
            if fault is not None:  # the work failed anyway: the fault waits for the next
                with self._lock:
                    fault.remaining += 1
            return record(self._error(error.status, error.ident, error.message))
        if fault is not None:
            return record(self._fault_response(fault))
        return record(self._json(status, document))

    def _take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.operation in (endpoint, "*"):
                    fault.remaining -= 1
                    return fault
        return None

    def _fault_response(self, fault: _Fault) -> Response:
        if fault.status == 429:
            response = self._error(429, "too_many_requests", "API Rate limit exceeded.")
        elif fault.status >= 500:
            response = self._error(fault.status, "server_error", "Unexpected server-side error")
        else:
            response = self._error(fault.status, "unprocessable_entity", "Injected failure.")
        if fault.retry_after is not None:
            response.headers["retry-after"] = str(fault.retry_after)
        return response

    def _rate_limited(self, endpoint: str) -> Response | None:
        """The burst limit (250/min) and the key-listing one (10/60 s), with retry-after."""
        now = time.monotonic()
        with self._lock:
            window = self._requests
            while window and window[0] < now - 3600:
                window.popleft()
            if len(window) >= self.hourly_limit:
                # The hourly limit: no retry-after; ratelimit-reset says when it eases.
                return self._error(429, "too_many_requests", "API Rate limit exceeded.")
            recent = sum(1 for t in window if t > now - 60)
            if recent >= self.burst_limit:
                wait = 60 - (now - next(t for t in window if t > now - 60))
                response = self._error(429, "too_many_requests", "API Rate limit exceeded.")
                response.headers["retry-after"] = str(max(1, int(wait) + 1))
                return response
            if endpoint == "sshKeys_list":
                keys = self._key_lists
                while keys and keys[0] < now - 60:
                    keys.popleft()
                if len(keys) >= KEY_LIST_LIMIT:
                    response = self._error(429, "too_many_requests", "API Rate limit exceeded.")
                    response.headers["retry-after"] = str(max(1, int(60 - (now - keys[0])) + 1))
                    return response
                keys.append(now)
            window.append(now)
        return None

    def _headers(self) -> dict[str, str]:
        """``ratelimit-*``: each request counts for an hour; the reset is when the oldest
        one still counted expires."""
        with self._lock:
            used = len(self._requests)
            oldest = self._requests[0] if self._requests else time.monotonic()
        reset = time.time() + (oldest + 3600 - time.monotonic())
        return {
            "ratelimit-limit": str(self.hourly_limit),
            "ratelimit-remaining": str(max(0, self.hourly_limit - used)),
            "ratelimit-reset": str(int(reset) + 1),
        }

    def _json(self, status: int, document: Any) -> Response:
        headers = self._headers()
        if status == 204 or document is None:
            return Response(status=204, headers=headers)
        return Response(
            json.dumps(document), status=status, headers=headers, mimetype="application/json"
        )

    def _error(self, status: int, ident: str, message: str) -> Response:
        document = {"id": ident, "message": message, "request_id": str(uuid.uuid4())}
        response = self._json(status, document)
        if status == 400:
            response.headers["x-request-id"] = document["request_id"]
        return response

    # -- paging -----------------------------------------------------------------------

    def _page(self, key: str, items: list[Any], query: dict[str, str], path: str) -> dict[str, Any]:
        per_page = int(query.get("per_page", 20))
        page = int(query.get("page", 1))
        start = (page - 1) * per_page
        document: dict[str, Any] = {
            key: items[start : start + per_page],
            "meta": {"total": len(items)},
        }
        pages: dict[str, str] = {}
        last = max(1, -(-len(items) // per_page))
        rest = {k: v for k, v in query.items() if k not in ("page", "per_page")}

        def link(n: int) -> str:
            return f"https://api.digitalocean.com{path}?" + urlencode(
                {**rest, "page": n, "per_page": per_page}
            )

        if page < last:
            pages["next"] = link(page + 1)
            pages["last"] = link(last)
        document["links"] = {"pages": pages}
        return document

    # -- operations -------------------------------------------------------------------

    def _op_account_get(self, **_: Any) -> tuple[int, Any]:
        return 200, {
            "account": {
                "droplet_limit": self.droplet_limit,
                "floating_ip_limit": 3,
                "email": "sammy@example.com",
                "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                "email_verified": True,
                "status": "active",
                "status_message": "",
            }
        }

    def _op_sizes_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            sizes = copy.deepcopy(self.sizes)
        return 200, self._page("sizes", sizes, query, "/v2/sizes")

    def _op_regions_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            regions = [
                {
                    "name": name,
                    "slug": slug,
                    "features": ["backups", "ipv6", "metadata", "install_agent", "storage"],
                    "available": True,
                    "sizes": [s["slug"] for s in self.sizes if slug in s["regions"]],
                }
                for slug, name in REGIONS.items()
            ]
        return 200, self._page("regions", regions, query, "/v2/regions")

    def _op_vpcs_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        vpcs = [
            {
                "name": f"default-{region}",
                "description": "",
                "region": region,
                "ip_range": "10.116.0.0/20",
                "default": True,
                "id": ident,
                "urn": f"do:vpc:{ident}",
                "created_at": "2024-01-01T00:00:00Z",
            }
            for region, ident in self.vpc.items()
        ]
        return 200, self._page("vpcs", vpcs, query, "/v2/vpcs")

    # droplets

    def _droplet_json(self, droplet: Droplet, now: float) -> dict[str, Any]:
        age = now - droplet.created
        status = "new"
        v4: list[dict[str, Any]] = []
        if age >= self.boot_seconds:
            status = "active"
            v4.append(
                {
                    "ip_address": droplet.private_ip,
                    "netmask": "255.255.240.0",
                    "gateway": "10.116.0.1",
                    "type": "private",
                }
            )
        if age >= self.boot_seconds + self.address_seconds:
            v4.append(
                {
                    "ip_address": droplet.public_ip,
                    "netmask": "255.0.0.0",
                    "gateway": "127.0.0.1",
                    "type": "public",
                }
            )
        size = droplet.size
        result: dict[str, Any] = {
            "id": droplet.id,
            "name": droplet.name,
            "memory": size["memory"],
            "vcpus": size["vcpus"],
            "disk": size["disk"],
            "disk_info": size["disk_info"],
            "locked": False,
            "status": status,
            "kernel": None,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "features": ["droplet_agent", "private_networking"],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": IMAGES[droplet.image],
            "volume_ids": [],
            "size": size,
            "size_slug": size["slug"],
            "networks": {"v4": v4, "v6": []},
            "region": {
                "name": REGIONS[droplet.region],
                "slug": droplet.region,
                "features": ["backups", "ipv6", "metadata"],
                "available": True,
                "sizes": [size["slug"]],
            },
            "tags": list(droplet.tags),
            "vpc_uuid": droplet.vpc_uuid,
        }
        if "gpu_info" in size:
            result["gpu_info"] = size["gpu_info"]
        return result

    def _existing(self) -> list[Droplet]:
        return self.live()

    def _op_droplets_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        tag = query.get("tag_name")
        kind = query.get("type")
        if tag is not None and (kind is not None or "name" in query):
            raise _ApiError(400, "bad_request", "tag_name cannot be combined with type or name")
        now = time.monotonic()
        with self._lock:
            found = []
            for droplet in self._existing():
                gpu = "gpu_info" in droplet.size
                if now - droplet.created < self.listing_lag:
                    continue
                if tag is not None:
                    if tag not in droplet.tags or (gpu and not self.gpus_in_tag_listing):
                        continue
                elif kind == "gpus":
                    if not gpu:
                        continue
                elif gpu:
                    continue  # untyped and type=droplets listings omit GPU droplets
                if "name" in query and droplet.name.lower() != query["name"].lower():
                    continue
                found.append(self._droplet_json(droplet, now))
        return 200, self._page("droplets", found, query, "/v2/droplets")

    def _op_droplets_get(self, droplet_id: int, **_: Any) -> tuple[int, Any]:
        with self._lock:
            match = [d for d in self._existing() if d.id == droplet_id]
            if not match:
                raise _not_found()
            return 200, {"droplet": self._droplet_json(match[0], time.monotonic())}

    def _op_droplets_create(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        names = body.get("names") or [body["name"]]
        if len(names) > MAX_NAMES:
            raise _ApiError(
                422, "unprocessable_entity", "You can only create up to 10 Droplets at once."
            )
        user_data = body.get("user_data") or ""
        if len(user_data.encode()) > MAX_USER_DATA:
            raise _ApiError(422, "unprocessable_entity", "user_data is too large (64 KiB max)")
        region = body.get("region") or "nyc3"
        with self._lock:
            size = next((s for s in self.sizes if s["slug"] == body["size"]), None)
            if size is None:
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "You specified an invalid size for Droplet creation.",
                )
            if region not in size["regions"] or not size["available"]:
                raise _ApiError(
                    422, "unprocessable_entity", "Size is not available in this region."
                )
            if body["size"] in self._sold_out:
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "There is not enough capacity in this region for the requested Droplet size.",
                )
            image = body["image"]
            if isinstance(image, int):
                image = next((k for k, v in IMAGES.items() if v["id"] == image), str(image))
            if image not in IMAGES:
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "You specified an invalid image for Droplet creation.",
                )
            keys = body.get("ssh_keys") or []
            known = {k["id"] for k in self.keys.values()} | {
                k["fingerprint"] for k in self.keys.values()
            }
            if any(k not in known for k in keys):
                raise _ApiError(
                    422, "unprocessable_entity", "invalid key identifiers for Droplet creation"
                )
            if len(self._existing()) + len(names) > self.droplet_limit:
                raise _ApiError(
                    422,
                    "unprocessable_entity",
                    "creating this/these droplet(s) will exceed your droplet limit",
                )
            made = len(names)
            partial_status = None
            if self._partial:
                made, partial_status = self._partial.pop(0)
            vpc = body.get("vpc_uuid") or self.vpc[region]
            tags = list(body.get("tags") or [])
            self.tags.update(tags)
            created = []
            now = time.monotonic()
            for name in names[:made]:
                n = next(self._ips)
                droplet = Droplet(
                    id=next(self._ids),
                    name=name,
                    size=copy.deepcopy(size),
                    region=region,
                    image=image,
                    tags=tags,
                    user_data=user_data,
                    ssh_keys=list(keys),
                    vpc_uuid=vpc,
                    created=now,
                    private_ip=f"10.116.{n // 250}.{n % 250 + 2}",
                    public_ip=f"127.{200 + n // 62500 % 50}.{n // 250 % 250}.{n % 250 + 2}",
                )
                self.droplets[droplet.id] = droplet
                created.append(self._droplet_json(droplet, now))
            if partial_status is not None:
                if self._limit_after_partial:
                    self.droplet_limit = len(self._existing())
                raise _ApiError(partial_status, "server_error", "Unexpected server-side error")
        actions = [
            {
                "id": 7515 + d["id"],
                "rel": "create",
                "href": f"https://api.digitalocean.com/v2/actions/{7515 + d['id']}",
            }
            for d in created
        ]
        if "names" in body:
            return 202, {"droplets": created, "links": {"actions": actions}}
        return 202, {"droplet": created[0], "links": {"actions": actions}}

    def _destroy(self, droplet: Droplet) -> None:
        if self._ignore_destroys > 0:
            self._ignore_destroys -= 1
            return
        if droplet.gone_at is None:
            droplet.gone_at = time.monotonic() + self.destroy_seconds

    def _op_droplets_destroy(self, droplet_id: int, **_: Any) -> tuple[int, Any]:
        with self._lock:
            match = [d for d in self._existing() if d.id == droplet_id]
            if not match:
                raise _not_found()
            self._destroy(match[0])
        return 204, None

    def _op_droplets_destroy_byTag(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            for droplet in self._existing():
                if query["tag_name"] in droplet.tags:
                    self._destroy(droplet)
        return 204, None

    # keys

    def _key(self, key: str) -> dict[str, Any]:
        for item in self.keys.values():
            if str(item["id"]) == key or item["fingerprint"] == key:
                return item
        raise _not_found()

    def _op_sshKeys_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            keys = [dict(k) for k in self.keys.values()]
        return 200, self._page("ssh_keys", keys, query, "/v2/account/keys")

    def _op_sshKeys_create(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        import base64
        import hashlib

        public = body["public_key"].strip()
        parts = public.split()
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (IndexError, ValueError) as error:
            raise _ApiError(
                422, "unprocessable_entity", "Key invalid type, we support 'ssh-rsa', 'ssh-ed25519'"
            ) from error
        digest = hashlib.md5(blob).hexdigest()
        fingerprint = ":".join(digest[i : i + 2] for i in range(0, 32, 2))
        with self._lock:
            if any(k["fingerprint"] == fingerprint for k in self.keys.values()):
                raise _ApiError(
                    422, "unprocessable_entity", "SSH Key is already in use on your account"
                )
            item = {
                "id": next(self._key_ids),
                "fingerprint": fingerprint,
                "public_key": public,
                "name": body["name"],
            }
            self.keys[item["id"]] = item
        return 201, {"ssh_key": dict(item)}

    def _op_sshKeys_get(self, key: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            return 200, {"ssh_key": dict(self._key(key))}

    def _op_sshKeys_delete(self, key: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            item = self._key(key)
            del self.keys[item["id"]]
        return 204, None

    # tags

    def _tag_json(self, name: str) -> dict[str, Any]:
        count = len(self.live(name))
        return {
            "name": name,
            "resources": {
                "count": count,
                "droplets": {"count": count},
                "imgages": {"count": 0},
                "volumes": {"count": 0},
                "volume_snapshots": {"count": 0},
                "databases": {"count": 0},
            },
        }

    def _op_tags_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            tags = [self._tag_json(t) for t in sorted(self.tags)]
        return 200, self._page("tags", tags, query, "/v2/tags")

    def _op_tags_create(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        with self._lock:
            self.tags.add(body["name"])
            return 201, {"tag": self._tag_json(body["name"])}

    def _op_tags_get(self, tag: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            if tag not in self.tags:
                raise _not_found()
            return 200, {"tag": self._tag_json(tag)}

    def _op_tags_delete(self, tag: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            if tag not in self.tags:
                raise _not_found()
            self.tags.discard(tag)
            for droplet in self.droplets.values():  # "also untags all the resources"
                if tag in droplet.tags:
                    droplet.tags = [t for t in droplet.tags if t != tag]
            for firewall in self.firewalls.values():
                firewall["tags"] = [t for t in firewall["tags"] if t != tag]
        return 204, None

    # firewalls

    def _op_firewalls_list(self, query: dict[str, str], **_: Any) -> tuple[int, Any]:
        with self._lock:
            firewalls = [copy.deepcopy(f) for f in self.firewalls.values()]
        return 200, self._page("firewalls", firewalls, query, "/v2/firewalls")

    def _op_firewalls_create(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        with self._lock:
            missing = [t for t in body.get("tags") or [] if t not in self.tags]
            if missing:
                raise _ApiError(400, "bad_request", f"tag {missing[0]} does not exist")
            firewall = {
                "id": str(uuid.uuid4()),
                "status": "succeeded",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pending_changes": [],
                "name": body["name"],
                "droplet_ids": list(body.get("droplet_ids") or []),
                "tags": list(body.get("tags") or []),
                "inbound_rules": body.get("inbound_rules") or [],
                "outbound_rules": body.get("outbound_rules") or [],
            }
            self.firewalls[firewall["id"]] = firewall
            return 202, {"firewall": copy.deepcopy(firewall)}

    def _op_firewalls_get(self, fid: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            if fid not in self.firewalls:
                raise _not_found()
            return 200, {"firewall": copy.deepcopy(self.firewalls[fid])}

    def _op_firewalls_delete(self, fid: str, **_: Any) -> tuple[int, Any]:
        with self._lock:
            if self.firewalls.pop(fid, None) is None:
                raise _not_found()
        return 204, None

    def _op_unknown(self, **_: Any) -> tuple[int, Any]:
        raise _not_found()


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """Calls are recorded in ``FakeDigitalOcean.calls``; no line per request."""


class _ApiError(Exception):
    def __init__(self, status: int, ident: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.ident = ident
        self.message = message


def _not_found() -> _ApiError:
    """DigitalOcean's answer for an id, tag or fingerprint it does not know."""
    return _ApiError(404, "not_found", "The resource you were accessing could not be found.")


def pydo_client(url: str, token: str = TOKEN, **options: Any) -> Any:
    """pydo as a user would make it, pointed at the fake over plain HTTP (research §1.2)."""
    import pydo
    from azure.core.credentials import AzureKeyCredential
    from azure.core.pipeline.policies import AzureKeyCredentialPolicy

    return pydo.Client(
        token,
        endpoint=url,
        authentication_policy=AzureKeyCredentialPolicy(
            AzureKeyCredential(token), "Authorization", prefix="Bearer"
        ),
        **options,
    )


# --------------------------------------------------------------------------------------
# droplets made reachable: the test's cloud-init
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# fixtures (import them into a test module: ``from tests.do_fakes import do_fake``)
# --------------------------------------------------------------------------------------

_SERVER: FakeDigitalOcean | None = None
_SERVER_LOCK = threading.Lock()


def shared_server() -> FakeDigitalOcean:
    """One fake per test process, started on first use (stopped when the process exits)."""
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            _SERVER = FakeDigitalOcean().start()
        return _SERVER


@pytest.fixture
def do_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDigitalOcean]:
    """A fresh DigitalOcean account on the fake, and an environment in which Skyward's
    DigitalOcean provider reaches only it. Fails the test if any request or response
    broke the published contract (a test that provokes one clears ``violations``)."""
    fake = shared_server()
    fake.reset()
    monkeypatch.setenv("SKYWARD_DIGITALOCEAN_ENDPOINT", fake.url)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", fake.token)
    monkeypatch.delenv("DIGITALOCEAN_ACCESS_TOKEN", raising=False)
    yield fake
    assert fake.violations == [], "requests or responses outside the DigitalOcean contract"


def iter_pages(fetch: Callable[[int], dict[str, Any]], key: str) -> Iterator[Any]:
    """Every item of a paged list."""
    page = 1
    while True:
        document = fetch(page)
        yield from document[key]
        if not (document.get("links") or {}).get("pages", {}).get("next"):
            return
        page += 1
