"""A stateful fake of Verda's public API v1 (``/v1/...``), on loopback.

Written from ``shared/research/verda.md`` (§2 endpoints, §3 shapes, §8 behaviour) and proven
faithful by ``tests/test_verda_fakes.py``, which drives it with Verda's own Python SDK.

What it models: OAuth2 client credentials and refresh tokens (JSON or form bodies, bearer
checks, a settable lifetime); the catalog (instance types with string prices, locations,
per-location and spot availability the test can change, images); SSH keys and startup scripts
under both ``/ssh-keys`` and ``/sshkeys`` (by-id GET answers a one-element array, deletes
are idempotent, a script quota); instances going ``ordered → provisioning → running`` on a
clock, delete refused while ``ordered``/``provisioning``, ``deleting → discontinued``,
discontinued ones gone from the list but readable by id; an OS volume per instance, deleted
(to the trash unless ``delete_permanently``) or detached as ``volume_ids`` says; spot
preemption; 503 "Not enough resources" when a type is not available; create answers with
a bare text id; every error is JSON ``{code, message}``; a bill that accrues while
anything exists that Verda would charge for.

Faults are armed with :meth:`VerdaFake.inject` (answer the next matching requests with an
error, before or *after* doing the work) so a fixture can drive any cell of a fault matrix.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.loopback_server import Served

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "DEFAULT_TYPES",
    "Fault",
    "VerdaFake",
    "instance_type",
    "nothing_left",
    "verda_env",
    "verda_fake",
]

CLIENT_ID = "skyward-test-client"
CLIENT_SECRET = "test-secret-do-not-log"
LOCATIONS = [
    {"code": "FIN-01", "name": "Finland 1", "country_code": "FI"},
    {"code": "FIN-02", "name": "Finland 2", "country_code": "FI"},
    {"code": "FIN-03", "name": "Finland 3", "country_code": "FI"},
]
_HOSTNAME = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_UNDELETABLE = {"new", "ordered", "provisioning", "validating", "pending"}
_GONE = {"discontinued"}
_BILLED_INSTANCE = {"provisioning", "running", "offline", "deleting"}


def instance_type(
    name: str,
    *,
    model: str,
    gpu: str,
    gpus: int,
    gpu_gb: int,
    cpus: int,
    ram_gb: int,
    price: str | float,
    spot: str | float,
    manufacturer: str = "NVIDIA",
) -> dict[str, Any]:
    """One ``GET /instance-types`` item, shaped like the real ones (§3.1)."""
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "instance_type": name,
        "model": model,
        "name": gpu or model,
        "display_name": None,
        "manufacturer": manufacturer,
        "description": "Dedicated Hardware Instance",
        "best_for": [],
        "p2p": None,
        "currency": "usd",
        "cpu": {"description": f"{cpus} CPU", "number_of_cores": cpus},
        "gpu": {"description": f"{gpus}x {gpu}" if gpus else "", "number_of_gpus": gpus},
        "gpu_memory": {
            "description": f"{gpu_gb}GB GPU RAM" if gpu_gb else "",
            "size_in_gigabytes": gpu_gb,
        },
        "memory": {"description": f"{ram_gb}GB RAM", "size_in_gigabytes": ram_gb},
        "storage": {"description": "dynamic"},
        "price_per_hour": price,
        "spot_price": spot,
        "deploy_warning": None,
        "supported_os": ["ubuntu-22.04", "ubuntu-24.04"],
    }


# Prices as the real API sends them: strings (one number, as the Go SDK tolerates).
DEFAULT_TYPES = [
    instance_type(
        "CPU.4V.16G", model="CPU Node", gpu="", gpus=0, gpu_gb=0, cpus=4, ram_gb=16,
        price="0.0700", spot="0.0300", manufacturer="AMD",
    ),
    instance_type(
        "CPU.8V.32G", model="CPU Node", gpu="", gpus=0, gpu_gb=0, cpus=8, ram_gb=32,
        price="0.1400", spot="0.0600", manufacturer="AMD",
    ),
    instance_type(
        "1V100.6V", model="V100", gpu="Tesla V100 16GB", gpus=1, gpu_gb=16, cpus=6,
        ram_gb=23, price="0.3900", spot="0.1300",
    ),
    instance_type(
        "1A100.22V", model="A100", gpu="A100 SXM4 80GB", gpus=1, gpu_gb=80, cpus=22,
        ram_gb=120, price="1.2900", spot="0.5200",
    ),
    instance_type(
        "1A100.40S.22V", model="A100", gpu="A100 SXM4 40GB", gpus=1, gpu_gb=40, cpus=22,
        ram_gb=120, price="0.7900", spot="0.3500",
    ),
    instance_type(
        "1L40S.20V", model="L40S", gpu="L40S 48GB", gpus=1, gpu_gb=48, cpus=20, ram_gb=60,
        price="0.9100", spot="0.3300",
    ),
    instance_type(
        "1H100.80S.30V", model="H100", gpu="H100 SXM5 80GB", gpus=1, gpu_gb=80, cpus=30,
        ram_gb=120, price="3.95", spot="1.70",
    ),
    instance_type(
        "8H100.80S.176V", model="H100", gpu="H100 SXM5 80GB", gpus=8, gpu_gb=640, cpus=176,
        ram_gb=1480, price="31.60", spot=13.6,
    ),
    instance_type(
        "1H200.141S.44V", model="H200", gpu="H200 SXM5 141GB", gpus=1, gpu_gb=141, cpus=44,
        ram_gb=185, price="3.59", spot="1.19",
    ),
    instance_type(
        "1B200.30V", model="B200", gpu="B200 SXM6 180GB", gpus=1, gpu_gb=180, cpus=30,
        ram_gb=184, price="4.49", spot="1.49",
    ),
    instance_type(
        "1RTX6000ADA.10V", model="RTX6000 Ada", gpu="RTX 6000 Ada 48GB", gpus=1, gpu_gb=48,
        cpus=10, ram_gb=60, price="0.8900", spot="0.3100",
    ),
]  # fmt: skip
IMAGES = [
    {
        "id": "2404f580-1300-1111-82b3-f199fb9b701b",
        "image_type": "ubuntu-24.04-cuda-12.8-open-docker",
        "name": "Ubuntu 24.04 + CUDA 12.8 Open + Docker",
        "details": ["Ubuntu 24.04", "CUDA 12.8", "Docker"],
        "is_default": True,
        "is_cluster": False,
        "category": "ubuntu",
    },
    {
        "id": "0c2b6a1e-6b1f-4a7e-9f0e-7f0d7c1c2404",
        "image_type": "ubuntu-24.04",
        "name": "Ubuntu 24.04",
        "details": ["Ubuntu 24.04"],
        "is_default": False,
        "is_cluster": False,
        "category": "ubuntu",
    },
]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` (a regex on the
    path after ``/v1``) with ``status`` and a JSON error; with ``after`` the request is
    carried out first (a create that fails *after* creating); ``skip`` lets that many
    matching requests through first."""

    method: str
    path: str
    status: int
    code: str
    message: str
    times: int = 1
    after: bool = False
    retry_after: int | None = None
    skip: int = 0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0 or method != self.method or re.fullmatch(self.path, path) is None:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class _Instance:
    data: dict[str, Any]
    created: float
    price: float
    deleting_since: float | None = None
    status_override: str | None = None
    billed_seconds: float = 0.0
    billed_from: float | None = None


@dataclass
class _Volume:
    data: dict[str, Any]
    permanently_deleted: bool = False
    in_trash: bool = False


@dataclass
class VerdaFake:
    """The fake API. ``url`` is the base URL (``http://127.0.0.1:PORT/v1``)."""

    clients: dict[str, str] = field(default_factory=lambda: {CLIENT_ID: CLIENT_SECRET})
    token_lifetime: int = 3600
    ordered_seconds: float = 0.2
    provisioning_seconds: float = 0.3
    deleting_seconds: float = 0.2
    script_quota: int = 100
    url: str = ""
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._served: Served | None = None
        self.reset()

    # -- control (what tests call) -----------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.token_lifetime = 3600
            self.ordered_seconds, self.provisioning_seconds, self.deleting_seconds = 0.2, 0.3, 0.2
            self.script_quota = 100
            self.accept_tags = True  # False: an API from before tags (they are new)
            self.types = [dict(t) for t in DEFAULT_TYPES]
            self.locations = [dict(loc) for loc in LOCATIONS]
            names = {t["instance_type"] for t in self.types}
            self.availability: dict[tuple[str, bool], set[str]] = {
                (loc["code"], spot): set(names) for loc in self.locations for spot in (False, True)
            }
            # (location, type, spot) -> how many more creates succeed (absent: unlimited)
            self.capacity: dict[tuple[str, str, bool], int] = {}
            self.tokens: dict[str, _Token] = {}
            self.refresh_tokens: dict[str, str] = {}
            self.keys: dict[str, dict[str, Any]] = {}
            self.scripts: dict[str, dict[str, Any]] = {}
            self.instances: dict[str, _Instance] = {}
            self.volumes: dict[str, _Volume] = {}
            self.faults: list[Fault] = []
            self.calls.clear()
            self.next_status: list[str] = []
            self._ips = 0

    def start(self) -> VerdaFake:
        fake = self

        class Handler(_Handler):
            api = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._served = Served(server, "verda-fake")
        self.url = f"http://127.0.0.1:{self._served.port}/v1"
        return self

    def stop(self) -> None:
        if self._served is not None:
            self._served.close()
            self._served = None

    def inject(
        self,
        method: str,
        path: str,
        status: int,
        message: str,
        *,
        code: str | None = None,
        times: int = 1,
        after: bool = False,
        retry_after: int | None = None,
        skip: int = 0,
    ) -> Fault:
        """Arm a fault (see :class:`Fault`); returns it so a test can read ``hits``."""
        codes = {
            400: "invalid_request",
            401: "unauthorized_request",
            403: "forbidden_action",
            404: "not_found",
            500: "server_error",
            503: "service_unavailable",
        }
        fault = Fault(
            method,
            path,
            status,
            code or codes.get(status, "server_error"),
            message,
            times=times,
            after=after,
            retry_after=retry_after,
            skip=skip,
        )
        with self.lock:
            self.faults.append(fault)
        return fault

    def set_available(
        self,
        instance_type: str,
        *,
        location: str | None = None,
        spot: bool | None = None,
        available: bool,
    ) -> None:
        """Make a type (un)available for new instances, per location and spot flag."""
        with self.lock:
            for (loc, is_spot), names in self.availability.items():
                if location not in (None, loc) or spot not in (None, is_spot):
                    continue
                if available:
                    names.add(instance_type)
                else:
                    names.discard(instance_type)

    def expire_tokens(self, *, refresh_too: bool = False) -> None:
        """Every issued access token stops working now (the client still thinks it valid)."""
        with self.lock:
            for token in self.tokens.values():
                token.expires_at = 0.0
            if refresh_too:
                self.refresh_tokens.clear()

    def preempt(self, instance_id: str) -> None:
        """A spot instance is taken back: discontinued, OS volume per ``on_spot_discontinue``."""
        with self.lock:
            item = self.instances[instance_id]
            self._advance(item)
            item.status_override = "discontinued"
            self._stop_billing(item)
            policy = item.data.get("_on_spot_discontinue") or "keep_detached"
            for volume_id in item.data["volume_ids"]:
                volume = self.volumes[volume_id]
                if volume.data["is_os_volume"] and policy != "keep_detached":
                    self._delete_volume(volume, permanent=policy == "delete_permanently")
                else:
                    self._detach(volume)

    def live_instances(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                self._render(i) for i in self.instances.values() if self._status(i) not in _GONE
            ]

    def live_volumes(self, *, trash: bool = True) -> list[dict[str, Any]]:
        """Volumes that still exist (in the trash too, unless ``trash=False``)."""
        with self.lock:
            return [
                dict(v.data)
                for v in self.volumes.values()
                if not v.permanently_deleted and (trash or not v.in_trash)
            ]

    def billing(self) -> list[str]:
        """What Verda would charge for right now: instance and volume ids."""
        return [i["id"] for i in self.live_instances() if i["status"] in _BILLED_INSTANCE] + [
            v["id"] for v in self.live_volumes()
        ]

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c.method == method and re.fullmatch(path, c.path))

    # -- state machine -----------------------------------------------------------------

    def _status(self, item: _Instance) -> str:
        self._advance(item)
        return str(item.data["status"])

    def _advance(self, item: _Instance) -> None:
        now = time.monotonic()
        data = item.data
        if item.status_override is not None:
            data["status"] = item.status_override
        elif item.deleting_since is not None:
            if now - item.deleting_since >= self.deleting_seconds:
                data["status"] = "discontinued"
                self._stop_billing(item)
            else:
                data["status"] = "deleting"
        elif data["status"] in ("ordered", "provisioning"):
            age = now - item.created
            if age >= self.ordered_seconds + self.provisioning_seconds:
                data["status"] = "running"
                self._ips += 1
                data["ip"] = f"127.0.1.{self._ips}"  # never contacted: tests map it
                item.billed_from = item.billed_from or now
            elif age >= self.ordered_seconds:
                data["status"] = "provisioning"
                item.billed_from = item.billed_from or now

    def _stop_billing(self, item: _Instance) -> None:
        if item.billed_from is not None:
            item.billed_seconds += time.monotonic() - item.billed_from
            item.billed_from = None

    def _render(self, item: _Instance) -> dict[str, Any]:
        self._advance(item)
        return {k: v for k, v in item.data.items() if not k.startswith("_")}

    def _detach(self, volume: _Volume) -> None:
        volume.data.update(status="detached", instance_id=None, instances=[])

    def _delete_volume(self, volume: _Volume, *, permanent: bool) -> None:
        volume.data.update(status="deleted", instance_id=None, instances=[])
        volume.data["deleted_at"] = _now()
        if permanent:
            volume.permanently_deleted = True
            volume.in_trash = False
        else:
            volume.in_trash = True

    # -- request handling --------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, payload, headers): payload is JSON-able, or a ``str`` sent as text."""
        call = Call(method, path, query, body)
        with self.lock:
            self.calls.append(call)
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
                fault.hits += 1
        try:
            if fault is not None and not fault.after:
                raise ApiError(fault.status, fault.code, fault.message)
            with self.lock:
                if path != "/oauth2/token":
                    self._check_bearer(auth)
                status, payload = self._route(method, path, query, body)
            if fault is not None:
                raise ApiError(fault.status, fault.code, fault.message)
        except ApiError as error:
            status, payload = error.status, {"code": error.code, "message": error.message}
        call.status = status
        headers = {}
        if fault is not None and fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return status, payload, headers

    def _check_bearer(self, auth: str) -> None:
        token = self.tokens.get(auth.removeprefix("Bearer ").strip())
        if not auth.startswith("Bearer ") or token is None or token.expires_at < time.time():
            raise ApiError(401, "unauthorized_request", "Invalid or expired access token")

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        one = parts[1] if len(parts) > 1 else None
        route = (method, parts[0] if parts else "")
        if route == ("POST", "oauth2"):
            return 200, self._token(body)
        if route == ("GET", "instance-types"):
            return 200, self.types
        if route == ("GET", "instance-availability"):
            return 200, self._availability(query, one)
        if route == ("GET", "locations"):
            return 200, self.locations
        if route == ("GET", "images"):
            return 200, self._images((query.get("instance_type") or [None])[0])
        if route == ("GET", "balance"):
            return 200, {"amount": 100.0, "currency": "usd"}
        if route == ("GET", "volume-types"):
            return 200, [
                {
                    "type": "NVMe",
                    "price": {"price_per_month_per_gb": 0.2, "cps_per_gb": 0.0, "currency": "usd"},
                    "is_shared_fs": False,
                }
            ]
        if route[1] in ("ssh-keys", "sshkeys"):
            return self._keyring(self.keys, "keys", method, one, body, "key")
        if route[1] == "scripts":
            return self._keyring(self.scripts, "scripts", method, one, body, "script")
        if route[1] == "instances":
            return self._instances(method, parts[1:], query, body)
        if route[1] == "volumes":
            return self._volumes(method, one, body)
        raise ApiError(404, "not_found", f"No route {method} {path}")

    # auth

    def _token(self, body: Any) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        grant = body.get("grant_type")
        if grant == "client_credentials":
            client = str(body.get("client_id", ""))
            if not client or self.clients.get(client) != body.get("client_secret"):
                raise ApiError(401, "unauthorized_request", "Invalid client credentials")
        elif grant == "refresh_token":
            found = self.refresh_tokens.pop(str(body.get("refresh_token", "")), None)
            if found is None:
                raise ApiError(401, "unauthorized_request", "Invalid refresh token")
            client = found
        else:
            raise ApiError(
                400, "invalid_request", "grant_type must be client_credentials or refresh_token"
            )
        access, refresh = uuid.uuid4().hex, uuid.uuid4().hex
        self.tokens[access] = _Token(client, time.time() + self.token_lifetime)
        self.refresh_tokens[refresh] = client
        return {
            "access_token": access,
            "refresh_token": refresh,
            "scope": "cloud-api-v1",
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
        }

    # catalog

    def _availability(self, query: dict[str, list[str]], one: str | None) -> Any:
        flag = (query.get("is_spot") or query.get("isSpot") or ["false"])[0]
        spot = flag.lower() == "true"  # no flag: on-demand only, as the real API does
        wanted = (query.get("location_code") or [None])[0]
        entries = [
            {
                "location_code": loc["code"],
                "availabilities": sorted(self.availability[(loc["code"], spot)]),
            }
            for loc in self.locations
            if wanted in (None, loc["code"])
        ]
        if one is not None:
            return any(one in e["availabilities"] for e in entries)
        return entries

    def _images(self, instance_type: str | None) -> list[dict[str, Any]]:
        """All images, or those valid for a type: CUDA images only for GPU types."""
        if instance_type is None:
            return IMAGES
        kind = next((t for t in self.types if t["instance_type"] == instance_type), None)
        if kind is None:
            raise ApiError(400, "invalid_request", f"Invalid instance type {instance_type}")
        gpu = kind["gpu"]["number_of_gpus"] > 0
        return [i for i in IMAGES if ("cuda" in i["image_type"]) == gpu]

    # keys and scripts

    def _keyring(
        self,
        store: dict[str, dict[str, Any]],
        plural: str,
        method: str,
        one: str | None,
        body: Any,
        field_name: str,
    ) -> tuple[int, Any]:
        if method == "GET" and one is None:
            return 200, list(store.values())
        if method == "GET":
            if one not in store:
                raise ApiError(404, "not_found", f"{plural[:-1].title()} not found")
            return 200, [store[one]]
        if method == "POST" and one is None:
            if not isinstance(body, dict) or not body.get("name") or not body.get(field_name):
                raise ApiError(400, "invalid_request", f"name and {field_name} are required")
            if plural == "scripts" and len(store) >= self.script_quota:
                raise ApiError(400, "invalid_request", "Startup script limit exceeded")
            if plural == "keys" and not str(body["key"]).startswith(("ssh-", "ecdsa-")):
                raise ApiError(400, "invalid_request", "Invalid public key")
            ident = str(uuid.uuid4())
            item = {
                "id": ident,
                "name": body["name"],
                field_name: body[field_name],
                "created_at": _now(),
            }
            if plural == "keys":
                item["fingerprint"] = "SHA256:" + uuid.uuid4().hex
            store[ident] = item
            return 201, ident
        if method == "DELETE":
            ids = [one] if one is not None else list((body or {}).get(plural) or [])
            for ident in ids:
                store.pop(str(ident), None)  # already gone: no error (dstack #3811)
            return 200, ""
        raise ApiError(405, "invalid_request", f"{method} not allowed")

    # instances

    def _instances(
        self, method: str, rest: list[str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        if method == "GET" and not rest:
            status = (query.get("status") or [None])[0]
            found = [self._render(i) for i in self.instances.values()]
            return 200, [
                i for i in found if i["status"] not in _GONE and status in (None, i["status"])
            ]
        if method == "GET" and len(rest) == 1:
            return 200, self._render(self._find(rest[0]))
        if method == "POST" and not rest:
            return 201, self._create(body)
        if method == "PUT" and not rest:
            return self._action(body)
        if method == "POST" and len(rest) == 2 and rest[1] == "tags":
            item = self._find(rest[0])
            key = str(body.get("key", "")).lower()
            if any(t["key"] == key for t in item.data["tags"]):
                raise ApiError(409, "conflict", f"Tag {key} already exists")
            tag = {"id": str(uuid.uuid4()), "key": key, "value": body.get("value")}
            item.data["tags"].append(tag)
            return 201, tag
        raise ApiError(405, "invalid_request", f"{method} not allowed")

    def _find(self, ident: str) -> _Instance:
        item = self.instances.get(ident)
        if item is None:
            raise ApiError(400, "invalid_request", "Invalid instance id")
        return item

    def _create(self, body: Any) -> str:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "body must be a JSON object")
        for name in ("instance_type", "image", "hostname", "description"):
            if not body.get(name):
                raise ApiError(400, "invalid_request", f"{name} is required")
        location = body.get("location_code")
        if not location:
            raise ApiError(400, "invalid_request", "location_code is required")
        if location not in {loc["code"] for loc in self.locations}:
            raise ApiError(400, "invalid_request", f"Invalid location_code {location}")
        kind = next((t for t in self.types if t["instance_type"] == body["instance_type"]), None)
        if kind is None:
            raise ApiError(400, "invalid_request", f"Invalid instance type {body['instance_type']}")
        if not _HOSTNAME.match(str(body["hostname"])):
            raise ApiError(400, "invalid_request", "Invalid hostname")
        valid = self._images(kind["instance_type"])
        if body["image"] not in {i["image_type"] for i in valid} | {i["id"] for i in valid}:
            raise ApiError(
                400, "invalid_request", "Operating system is not valid for this instance type"
            )
        for key_id in body.get("ssh_key_ids") or []:
            if key_id not in self.keys:
                raise ApiError(400, "invalid_request", f"Invalid ssh key id {key_id}")
        script = body.get("startup_script_id")
        if script is not None and script not in self.scripts:
            raise ApiError(400, "invalid_request", "Invalid startup script id")
        spot = bool(body.get("is_spot"))
        os_volume = body.get("os_volume") or {}
        policy = os_volume.get("on_spot_discontinue")
        if policy is not None and not spot:
            raise ApiError(400, "invalid_request", "on_spot_discontinue is only valid for spot")
        if policy not in (None, "keep_detached", "move_to_trash", "delete_permanently"):
            raise ApiError(400, "invalid_request", "Invalid on_spot_discontinue")
        tags = body.get("tags") or []
        if "tags" in body and not self.accept_tags:
            raise ApiError(400, "invalid_request", 'Unknown field "tags"')
        if len(tags) > 10:
            raise ApiError(400, "invalid_request", "At most 10 tags")
        name = kind["instance_type"]
        left = self.capacity.get((location, name, spot))
        if name not in self.availability[(location, spot)] or left == 0:
            gpus = kind["gpu"]["number_of_gpus"]
            raise ApiError(
                503,
                "service_unavailable",
                f"Not enough resources to deploy a {gpus} GPU instance type {name} in {location}",
            )
        if left is not None:
            self.capacity[(location, name, spot)] = left - 1
        ident, volume_id = str(uuid.uuid4()), str(uuid.uuid4())
        # next_status: what the next creates become ("error", "no_capacity", "preempted")
        status = self.next_status.pop(0) if self.next_status else "ordered"
        preempted = status == "preempted"
        status = "ordered" if preempted else status
        data: dict[str, Any] = {
            "id": ident,
            "status": status,
            "hostname": body["hostname"],
            "description": body["description"],
            "instance_type": name,
            "location": location,
            "image": body["image"],
            "os_name": "Ubuntu 24.04",
            "ip": None,
            "created_at": _now(),
            "price_per_hour": float(kind["spot_price" if spot else "price_per_hour"])
            / max(1, kind["gpu"]["number_of_gpus"]),
            "is_spot": spot,
            "contract": body.get("contract") or ("SPOT" if spot else "PAY_AS_YOU_GO"),
            "pricing": body.get("pricing") or "DYNAMIC_PRICE",
            "ssh_key_ids": list(body.get("ssh_key_ids") or []),
            "startup_script_id": script,
            "os_volume_id": volume_id,
            "volume_ids": [volume_id],
            "jupyter_token": uuid.uuid4().hex,
            "cpu": kind["cpu"],
            "gpu": kind["gpu"],
            "gpu_memory": kind["gpu_memory"],
            "memory": kind["memory"],
            "storage": kind["storage"],
            "tags": [
                {"id": str(uuid.uuid4()), "key": str(t["key"]).lower(), "value": t.get("value")}
                for t in tags
            ],
            "_on_spot_discontinue": policy,
            "_body": body,
        }
        price = float(kind["spot_price" if spot else "price_per_hour"])
        item = _Instance(data, time.monotonic(), price)
        if status in ("error", "no_capacity"):
            item.status_override = status
        self.instances[ident] = item
        self.volumes[volume_id] = _Volume(
            {
                "id": volume_id,
                "name": os_volume.get("name") or f"OS-{body['hostname']}",
                "size": int(os_volume.get("size") or 50),
                "type": "NVMe",
                "status": "attached",
                "is_os_volume": True,
                "created_at": _now(),
                "target": "vda",
                "location": location,
                "instance_id": ident,
                "ssh_key_ids": list(body.get("ssh_key_ids") or []),
                "deleted_at": None,
                "pseudo_path": None,
                "mount_command": None,
                "create_directory_command": None,
                "filesystem_to_fstab_command": None,
                "instances": [
                    {
                        "id": ident,
                        "ip": None,
                        "instance_type": name,
                        "status": status,
                        "hostname": body["hostname"],
                        "os_volume_id": volume_id,
                    }
                ],
                "contract": "PAY_AS_YOU_GO",
                "base_hourly_cost": 0.0137,
                "monthly_price": 10.0,
                "currency": "usd",
                "long_term": None,
                "tags": [],
            }
        )
        if preempted:
            self.preempt(ident)
        return ident

    def _action(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("action"):
            raise ApiError(400, "invalid_request", "action is required")
        ids = body.get("id")
        ids = [ids] if isinstance(ids, str) else list(ids or [])
        if not ids:
            raise ApiError(400, "invalid_request", "id is required")
        action = body["action"]
        results, failures = [], []
        for ident in ids:
            try:
                self._act(str(ident), action, body)
                results.append({"action": action, "instanceId": ident, "status": "success"})
            except ApiError as error:
                failures.append(error)
                results.append(
                    {
                        "action": action,
                        "instanceId": ident,
                        "status": "error",
                        "error": error.message,
                        "statusCode": error.status,
                    }
                )
        if failures and len(failures) == len(ids):
            raise failures[0]  # the whole request refused: one JSON error
        return (207 if failures else 202), results

    def _act(self, ident: str, action: str, body: dict[str, Any]) -> None:
        item = self._find(ident)
        status = self._status(item)
        if action in ("delete", "discontinue", "hibernate"):
            if status in _UNDELETABLE:
                raise ApiError(403, "forbidden_action", f"Can't discontinue a {status} instance")
            if status in ("discontinued", "deleting"):
                raise ApiError(403, "forbidden_action", f"Can't discontinue a {status} instance")
            item.status_override = None
            item.deleting_since = time.monotonic()
            item.data["status"] = "deleting"
            named = body.get("volume_ids")
            permanent = bool(body.get("delete_permanently"))
            for volume_id in item.data["volume_ids"]:
                volume = self.volumes[volume_id]
                if action == "hibernate":
                    self._detach(volume)
                elif (volume_id in named) if named is not None else volume.data["is_os_volume"]:
                    self._delete_volume(volume, permanent=permanent)
                else:
                    self._detach(volume)
        elif action in ("shutdown", "force_shutdown"):
            if status != "running":
                raise ApiError(403, "forbidden_action", f"Can't shut down a {status} instance")
            item.status_override = "offline"
        elif action == "start":
            if status != "offline":
                raise ApiError(403, "forbidden_action", f"Can't start a {status} instance")
            item.status_override = None
            item.data["status"] = "running"
        else:
            raise ApiError(400, "invalid_request", f"Invalid action {action}")

    # volumes

    def _volumes(self, method: str, one: str | None, body: Any) -> tuple[int, Any]:
        if method == "GET" and one is None:
            return 200, [
                dict(v.data)
                for v in self.volumes.values()
                if not v.in_trash and not v.permanently_deleted
            ]
        if method == "GET" and one == "trash":
            return 200, [
                {**v.data, "is_permanently_deleted": False}
                for v in self.volumes.values()
                if v.in_trash
            ]
        if method == "GET":
            return 200, dict(self._volume(one).data)
        if method == "DELETE" and one is not None:
            volume = self._volume(one)
            if volume.data["status"] == "attached":
                raise ApiError(400, "invalid_request", "Volume is attached to an instance")
            self._delete_volume(volume, permanent=bool((body or {}).get("is_permanent")))
            return 202, ""
        if method == "PUT" and one is None and isinstance(body, dict):
            ids = body.get("id")
            for ident in [ids] if isinstance(ids, str) else list(ids or []):
                volume = self._volume(str(ident))
                if body.get("action") != "delete":
                    raise ApiError(400, "invalid_request", "Only delete is modelled")
                self._delete_volume(volume, permanent=bool(body.get("is_permanent")))
            return 202, ""
        raise ApiError(405, "invalid_request", f"{method} not allowed")

    def _volume(self, ident: str) -> _Volume:
        volume = self.volumes.get(ident)
        if volume is None:
            raise ApiError(404, "not_found", "Volume not found")
        return volume


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: VerdaFake

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
        headers: dict[str, str] = {}
        if not split.path.startswith("/v1/"):
            status, payload = 404, {"code": "not_found", "message": "No such path"}
        else:
            status, payload, headers = self.api.handle(
                self.command,
                split.path[3:],
                parse_qs(split.query),
                body,
                self.headers.get("Authorization") or "",
            )
        if isinstance(payload, str):
            data, kind = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, kind = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


# -- fixtures (import them into a test module to use them) ---------------------------------


def nothing_left(fake: VerdaFake) -> None:
    """Nothing of any pool is left on ``fake``, and nothing bills."""
    assert fake.live_instances() == []
    assert fake.live_volumes() == [], "volumes, trash included"
    assert fake.keys == {}
    assert fake.scripts == {}
    assert fake.billing() == []


@pytest.fixture(scope="session")
def verda_fake() -> Iterator[VerdaFake]:
    """The fake Verda API on 127.0.0.1:<free port>, for the whole session."""
    fake = VerdaFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def verda_env(verda_fake: VerdaFake, monkeypatch: pytest.MonkeyPatch) -> Iterator[VerdaFake]:
    """A fresh fake, and an environment in which Skyward's Verda provider reaches only it."""
    verda_fake.reset()
    monkeypatch.setenv("SKYWARD_VERDA_ENDPOINT", verda_fake.url)
    monkeypatch.setenv("VERDA_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("VERDA_CLIENT_SECRET", CLIENT_SECRET)
    yield verda_fake
    verda_fake.faults.clear()
