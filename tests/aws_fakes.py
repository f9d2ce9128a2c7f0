"""AWS test fixtures: moto's server, recorded and throttled, and a fake Price List API.

Everything here talks real HTTP on 127.0.0.1 so boto3 is exercised end to end
(signing, serialization, retries); nothing in boto3 is mocked.

* :class:`MotoServer` runs moto's WSGI app in a thread behind a middleware that records
  one :class:`Call` per request and can answer the next requests of an action with AWS's
  throttling error (:meth:`MotoServer.throttle_next`). Because the server runs in this
  process, a few things AWS has and moto lacks are provided by touching moto's in-memory
  backends directly (the emulator, never our provider):

  - :meth:`MotoServer.seed_public_parameters`: AWS's public SSM parameters for Ubuntu
    22.04 and the Deep Learning Base AMIs. moto refuses ``PutParameter`` under ``/aws/``
    (``AccessDeniedException: No access to reserved parameter name``), the way AWS does,
    so the parameters are appended to ``ssm_backends[account][region]._parameters`` and
    the images they name are added to ``ec2_backends[account][region].amis`` as public
    Canonical / Amazon images with realistic names and architectures.
  - :meth:`MotoServer.make_capacity_unavailable`: EC2 Fleet answers
    ``InsufficientInstanceCapacity`` (in ``Errors``, with partial ``Instances``) for a
    lifecycle and/or instance types, by wrapping moto's ``Fleet.create_spot_requests`` /
    ``Fleet.create_on_demand_requests`` and the ``CreateFleet`` response method.
  - :meth:`MotoServer.set_spot_prices`: realistic ``DescribeSpotPriceHistory`` prices
    (moto hard-codes ``"0.00001"`` in its response method).
  - EC2 paging (:data:`EC2_PAGED_ACTIONS`): moto answers ``DescribeInstanceTypes`` and
    ``DescribeInstanceTypeOfferings`` in one page whatever ``MaxResults`` says; here they
    are paged like EC2 pages them, with opaque page tokens, and an out-of-range
    ``MaxResults`` or a token not issued for the same query is refused with EC2's error.

  The hooks are installed once while a server runs and, but for paging, do nothing
  unless a rule or price was set; :meth:`MotoServer.reset` clears them (and forgets every
  page token) with moto's state.
* :class:`PricingServer` is a small JSON 1.1 server for ``AWSPriceListService``
  (``GetProducts``, ``DescribeServices``, ``GetAttributeValues``) answering with price
  documents in AWS's ``aws_v1`` format, reached through ``AWS_ENDPOINT_URL_PRICING``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import math
import random
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs

from skyward.provider import Instance
from tests.loopback_server import Served

# --------------------------------------------------------------------------------------
# recorded calls
# --------------------------------------------------------------------------------------

READ_PREFIXES = ("Describe", "Get", "List")
READ_METHODS = ("GET ", "HEAD ")


@dataclass(frozen=True)
class Call:
    """One HTTP request that reached the fake: ``Call("ec2", "RunInstances")``.

    ``action`` is the API action (``Action=`` of query-protocol services, the part of
    ``X-Amz-Target`` after the dot for JSON services) or ``"METHOD /path"`` for REST
    services such as S3. ``region`` and ``throttled`` do not take part in equality.
    """

    service: str
    action: str
    region: str = field(default="", compare=False)
    throttled: bool = field(default=False, compare=False)
    params: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Query-protocol parameters as sent (``LaunchTemplateData.MetadataOptions.HttpTokens``)."""

    @property
    def is_write(self) -> bool:
        return is_write_action(self.action)


def is_write_action(action: str) -> bool:
    """Not a Describe*/Get*/List* action (nor a REST GET/HEAD)."""
    return not action.startswith(READ_PREFIXES + READ_METHODS)


class _CallLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def append(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()


# --------------------------------------------------------------------------------------
# throttling
# --------------------------------------------------------------------------------------

_DEFAULT_THROTTLE_CODES = {"ec2": "RequestLimitExceeded", "s3": "SlowDown"}


@dataclass
class _Throttle:
    remaining: int
    code: str | None
    status: int | None


class _Throttles:
    """Requests armed to be answered with a throttling error instead of reaching the API,
    keyed ``(service, action)``; action ``"*"`` stands for any action of the service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[tuple[str, str], _Throttle] = {}

    def arm(
        self, service: str, action: str, times: int, code: str | None, status: int | None
    ) -> None:
        with self._lock:
            self._armed[(service, action)] = _Throttle(times, code, status)

    def take(self, service: str, action: str) -> _Throttle | None:
        """Use up one armed answer for this request, if any is left."""
        with self._lock:
            for key in ((service, action), (service, "*")):
                throttle = self._armed.get(key)
                if throttle and throttle.remaining > 0:
                    throttle.remaining -= 1
                    return throttle
        return None

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()


def _json_throttle(code: str | None) -> dict[str, str]:
    return {"__type": code or "ThrottlingException", "message": "Rate exceeded"}


def _throttle_response(
    protocol: str, service: str, code: str | None, status: int | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    request_id = str(uuid.uuid4())
    if protocol == "json":
        payload = _json_throttle(code)
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", f"{payload['__type']}:"),
        ]
        return status or 400, headers, json.dumps(payload).encode()
    if protocol == "query" and service == "ec2":
        code = code or "RequestLimitExceeded"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>Request limit exceeded.</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        return status or 400, [("Content-Type", "text/xml;charset=UTF-8")], xml.encode()
    if protocol == "query":
        code = code or "Throttling"
        xml = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{code}</Code><Message>Rate exceeded</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return status or 400, [("Content-Type", "text/xml")], xml.encode()
    code = code or _DEFAULT_THROTTLE_CODES.get(service, "SlowDown")
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{code}</Code><Message>Please reduce your request rate.</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return status or 503, [("Content-Type", "application/xml")], xml.encode()


# --------------------------------------------------------------------------------------
# serving on loopback
# --------------------------------------------------------------------------------------


class _LoopbackServer:
    """What both fakes share: an HTTP server on ``127.0.0.1:<free port>`` served from a
    daemon thread, and the throttles that the subclass's ``throttle_next`` arms."""

    def __init__(self) -> None:
        self._served: Served | None = None
        self._throttles = _Throttles()
        self.url = ""
        self.port = 0

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        self._shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, server: Any, name: str) -> Self:
        self._served = Served(server, name)
        self.port = self._served.port
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def _shutdown(self) -> bool:
        """Stop serving; False if the server was not running."""
        if self._served is None:
            return False
        self._served.close()
        self._served = None
        return True


# --------------------------------------------------------------------------------------
# the recording middleware
# --------------------------------------------------------------------------------------

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_STATUS_TEXT[503] = "Service Unavailable"


def _credential_scope(environ: Mapping[str, Any]) -> tuple[str, str]:
    """(service, region) from a SigV4 ``Authorization`` header; ("unknown", "") else."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        credential = auth.split("Credential=", 1)[1].split(",", 1)[0]
        _, _, region, service, _ = credential.split("/")
    except (IndexError, ValueError):
        return "unknown", ""
    return service.lower(), region


class _RecordingMiddleware:
    def __init__(self, app: Callable[..., Any], server: MotoServer) -> None:
        self._app = app
        self._server = server

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/moto-api"):
            return self._app(environ, start_response)
        service, region = _credential_scope(environ)
        protocol, action, params = self._identify(environ, path)
        throttle = self._server._throttles.take(service, action)
        self._server._log.append(
            Call(service, action, region, throttled=throttle is not None, params=params)
        )
        handler = self._server.json_handlers.get(service)
        if throttle is None and handler is not None and protocol == "json":
            # Actions moto does not serve (SSM sessions) answered by a test's own fake.
            raw = _drain(environ)
            environ["wsgi.input"] = io.BytesIO(raw)
            answer = handler(action, json.loads(raw or b"{}"))
            if answer is not None:
                status, document = answer
                body = json.dumps(document).encode()
                start_response(
                    f"{status} {_STATUS_TEXT.get(status, 'Error')}",
                    [
                        ("Content-Type", "application/x-amz-json-1.1"),
                        ("Content-Length", str(len(body))),
                    ],
                )
                return [body]
        if throttle is None:
            return self._app(environ, start_response)
        _drain(environ)
        status, headers, body = _throttle_response(
            protocol, service, throttle.code, throttle.status
        )
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_STATUS_TEXT.get(status, 'Error')}", headers)
        return [body]

    @staticmethod
    def _identify(environ: dict[str, Any], path: str) -> tuple[str, str, dict[str, str]]:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return "json", target.rsplit(".", 1)[-1], {}
        params = parse_qs(environ.get("QUERY_STRING", ""))
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            body = _drain(environ)
            environ["wsgi.input"] = io.BytesIO(body)
            params.update(parse_qs(body.decode("utf-8", "replace")))
        if "Action" in params:
            return "query", params["Action"][0], {k: v[0] for k, v in params.items()}
        if path.startswith("/service/") and "/operation/" in path:  # smithy-rpc-v2
            return "json", path.rsplit("/", 1)[-1], {}
        return "rest", f"{environ.get('REQUEST_METHOD', 'GET')} {path}", {}


def _drain(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return environ["wsgi.input"].read(length) if length else b""


# --------------------------------------------------------------------------------------
# hooks into moto's in-process backends (the emulator, not our provider)
# --------------------------------------------------------------------------------------


@dataclass
class CapacityRule:
    """Launches EC2 Fleet refuses while the rule is active (see ``make_capacity_unavailable``).

    ``available`` is how many more matching instances may still be launched (in total,
    over every ``CreateFleet`` while the rule is active); ``launched`` and ``refused``
    count what the rule let through and turned away.
    """

    lifecycle: str | None
    instance_types: frozenset[str] | None
    region: str | None
    available: int
    error_code: str
    message: str | None
    launched: int = 0
    refused: int = 0

    def matches(self, region: str, lifecycle: str, instance_type: str) -> bool:
        return (
            (self.lifecycle is None or self.lifecycle == lifecycle)
            and (self.instance_types is None or instance_type in self.instance_types)
            and (self.region is None or self.region == region)
        )

    def error_message(self, lifecycle: str, instance_type: str, zone: str) -> str:
        if self.message is not None:
            return self.message
        if self.error_code == "InsufficientInstanceCapacity" and lifecycle == "spot":
            return "There is no Spot capacity available that matches your request."
        if self.error_code == "InsufficientInstanceCapacity":
            return (
                f"We currently do not have sufficient {instance_type} capacity in the "
                f"Availability Zone you requested ({zone}). Our system will be working on "
                "provisioning additional capacity."
            )
        return f"{self.error_code} for {instance_type}"


@dataclass(frozen=True)
class EC2Paging:
    """How EC2 pages an action that moto answers in one page: ``result_key`` items, at most
    ``max_results`` a page (also the page size when the request names none)."""

    result_key: str
    min_results: int
    max_results: int


# The limits of botocore's service model (DITMaxResults, DITOMaxResults).
EC2_PAGED_ACTIONS: dict[str, EC2Paging] = {
    "DescribeInstanceTypes": EC2Paging("InstanceTypes", 5, 100),
    "DescribeInstanceTypeOfferings": EC2Paging("InstanceTypeOfferings", 5, 1000),
}
# EC2's code for a NextToken it did not issue (or issued for another query).
_INVALID_PAGINATION_TOKEN = "InvalidPaginationToken"


def _attach_profiles(fleet: Any) -> None:
    """EC2 gives fleet instances their launch template's instance profile; moto's fleet
    drops it, so associate it as AWS would (what SSM and S3 access depend on)."""
    profiles = [s.iam_instance_profile for s in fleet.launch_specs if s.iam_instance_profile]
    if not profiles:
        return
    profile = profiles[0]
    while isinstance(profile.get("Arn"), dict):  # moto's spec wraps the template's value
        profile = profile["Arn"]
    backend = fleet.ec2_backend
    instances = [entry["instance"] for entry in fleet.on_demand_instances] + [
        request.instance for request in fleet.spot_requests
    ]
    for instance in instances:
        if instance.id not in backend.iam_instance_profile_associations:
            backend.associate_iam_instance_profile(
                instance.id,
                iam_instance_profile_name=profile.get("Name"),
                iam_instance_profile_arn=profile.get("Arn"),
            )


class _EmulatorHooks:
    """Process-wide patches of moto's classes; inert while no rule or price is set, except
    EC2 paging (:data:`EC2_PAGED_ACTIONS`), which is always on, as on AWS."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.capacity_rules: list[CapacityRule] = []
        self.spot_prices: dict[tuple[str, str, str | None], float] = {}
        self.page_tokens: dict[str, tuple[str, int]] = {}
        self.skip_ecs_amis = False
        self._users = 0
        self._undo: list[Callable[[], None]] = []

    def clear(self) -> None:
        with self.lock:
            self.capacity_rules.clear()
            self.spot_prices.clear()
            self.page_tokens.clear()

    def install(self) -> None:
        with self.lock:
            self._users += 1
            if self._users > 1:
                return
            from moto.core.utils import camelcase_to_underscores
            from moto.ec2.models.amis import AmiBackend
            from moto.ec2.models.fleets import Fleet
            from moto.ec2.responses.fleets import Fleets
            from moto.ec2.responses.instances import InstanceResponse
            from moto.ec2.responses.spot_instances import SpotInstances

            self._patch(Fleet, "create_spot_requests", self._limited_launch("spot"))
            self._patch(Fleet, "create_on_demand_requests", self._limited_launch("on-demand"))
            self._patch(Fleets, "create_fleet", self._create_fleet_with_errors)
            self._patch(AmiBackend, "_load_amis", self._load_amis)
            self._patch(SpotInstances, "describe_spot_price_history", self._spot_price_history)
            for action, paging in EC2_PAGED_ACTIONS.items():
                self._patch(InstanceResponse, camelcase_to_underscores(action), self._paged(paging))

    def uninstall(self) -> None:
        with self.lock:
            self._users -= 1
            if self._users > 0:
                return
            while self._undo:
                self._undo.pop()()

    def _patch(self, owner: type, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        replacement = functools.wraps(original)(make(original))
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))

    # -- moto's default images ----------------------------------------------------------

    def _load_amis(self, original: Any) -> Any:
        hooks = self

        def load_amis(backend: Any) -> None:
            if not hooks.skip_ecs_amis:
                original(backend)
                return
            from moto.ec2.models import amis

            def load_resource(resource: str) -> Any:
                return [] if resource.startswith("ec2/resources/ecs/") else loader(resource)

            with hooks.lock:  # ~1,200 ECS-optimized images per region: most of a reset's cost
                loader, amis.load_resource = amis.load_resource, load_resource  # type: ignore[attr-defined]
                try:
                    original(backend)
                finally:
                    amis.load_resource = loader  # type: ignore[attr-defined]

        return load_amis

    # -- EC2 Fleet capacity --------------------------------------------------------------

    def _limited_launch(self, lifecycle: str) -> Callable[[Any], Any]:
        hooks = self

        def make(original: Any) -> Any:
            def launch(fleet: Any, weight_to_add: float) -> Any:
                region = fleet.ec2_backend.region_name
                with hooks.lock:
                    rules = [r for r in hooks.capacity_rules if r.lifecycle in (None, lifecycle)]
                if not rules:
                    result = original(fleet, weight_to_add)
                else:
                    result = hooks._launch_under_rules(
                        fleet, original, lifecycle, region, weight_to_add
                    )
                _attach_profiles(fleet)
                return result

            return launch

        return make

    def _launch_under_rules(
        self, fleet: Any, original: Any, lifecycle: str, region: str, weight_to_add: float
    ) -> Any:
        """Walk the fleet's launch specs like AWS walks capacity pools: launch what the
        rules allow from each, record an ``Errors`` entry for each one short of capacity."""
        specs = list(fleet.launch_specs)
        if (fleet.spot_options or {}).get("AllocationStrategy") != "diversified":
            specs.sort(key=lambda spec: float(spec.spot_price or "+inf"))
        errors: list[dict[str, Any]] = fleet.__dict__.setdefault("errors", [])
        remaining = weight_to_add
        result = None
        for spec in specs:
            if remaining <= 0:
                break
            weight = float(spec.weighted_capacity or 1)
            needed = math.ceil(remaining / weight)
            allowed = needed
            error_rule: CapacityRule | None = None
            with self.lock:
                for rule in self.capacity_rules:
                    if rule.matches(region, lifecycle, spec.instance_type):
                        granted = max(0, min(allowed, rule.available))
                        rule.available -= granted
                        rule.launched += granted
                        rule.refused += allowed - granted
                        allowed = granted
                        error_rule = rule
            if allowed < needed and error_rule is not None:
                self._record_error(errors, spec, lifecycle, region, error_rule)
            if allowed > 0:
                fleet.get_launch_spec_counts = lambda _w, s=spec, n=allowed: (
                    {s: n},
                    n * float(s.weighted_capacity or 1),
                )
                try:
                    result = original(fleet, allowed * weight)
                finally:
                    del fleet.get_launch_spec_counts
                remaining -= allowed * weight
        return result if result is not None else (fleet.spot_requests or None)

    @staticmethod
    def _record_error(
        errors: list[dict[str, Any]], spec: Any, lifecycle: str, region: str, rule: CapacityRule
    ) -> None:
        template: dict[str, Any] = {"LaunchTemplateSpecification": spec.launch_template_spec}
        if spec.overrides:
            template["Overrides"] = spec.overrides
        zone = (spec.overrides or {}).get("AvailabilityZone") or f"{region}a"
        entry = {
            "LaunchTemplateAndOverrides": template,
            "Lifecycle": lifecycle,
            "ErrorCode": rule.error_code,
            "ErrorMessage": rule.error_message(lifecycle, spec.instance_type, zone),
        }
        if entry not in errors:
            errors.append(entry)

    def _create_fleet_with_errors(self, original: Any) -> Any:
        def create_fleet(response: Any) -> Any:
            result = original(response)
            fleet = response.ec2_backend.get_fleet(result.result["FleetId"])
            errors = getattr(fleet, "errors", None)
            if errors and fleet.fleet_type == "instant":
                result.result["Errors"] = errors
            return result

        return create_fleet

    # -- spot prices ---------------------------------------------------------------------

    def _spot_price_history(self, original: Any) -> Any:
        hooks = self

        def describe_spot_price_history(response: Any) -> Any:
            result = original(response)
            with hooks.lock:
                prices = dict(hooks.spot_prices)
            if not prices:
                return result
            region = response.region
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            for entry in result.result["SpotPriceHistory"]:
                key = (region, entry["InstanceType"])
                price = prices.get((*key, entry["AvailabilityZone"]), prices.get((*key, None)))
                if price is not None:
                    entry["SpotPrice"] = f"{price:.6f}"
                    entry["Timestamp"] = now
            return result

        return describe_spot_price_history

    # -- EC2 pagination ------------------------------------------------------------------

    def _paged(self, paging: EC2Paging) -> Callable[[Any], Any]:
        hooks = self

        def make(original: Any) -> Any:
            def describe(response: Any) -> Any:
                limit = _page_limit(response._get_param("MaxResults"), paging)
                token = response._get_param("NextToken")
                query = _query_fingerprint(response)
                start = hooks._resume(token, query) if token else 0
                result = original(response)
                items = result.result[paging.result_key]
                page = items[start : start + limit]
                result.result[paging.result_key] = page
                end = start + len(page)
                if end < len(items):
                    result.result["NextToken"] = hooks._issue_token(query, end)
                return result

            return describe

        return make

    def _issue_token(self, query: str, offset: int) -> str:
        # Random and kept here, so a client can neither read an offset from it nor forge one.
        token = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()
        with self.lock:
            self.page_tokens[token] = (query, offset)
        return token

    def _resume(self, token: str, query: str) -> int:
        from moto.ec2.exceptions import EC2ClientError

        with self.lock:
            issued = self.page_tokens.get(token)
        if issued is None or issued[0] != query:
            raise EC2ClientError(
                _INVALID_PAGINATION_TOKEN,
                "The specified pagination token is not valid or is expired.",
            )
        return issued[1]


def _page_limit(value: object, paging: EC2Paging) -> int:
    from moto.ec2.exceptions import InvalidParameterValue

    if value is None:
        return paging.max_results
    try:
        limit = int(str(value))
    except ValueError:
        limit = -1
    if not paging.min_results <= limit <= paging.max_results:
        raise InvalidParameterValue(
            f"Value ( {value} ) for parameter maxResults is invalid. Expecting a value "
            f"between {paging.min_results} and {paging.max_results}."
        )
    return limit


def _query_fingerprint(response: Any) -> str:
    """What a page token belongs to: the action, account, region and every parameter but
    the paging ones (a client may change MaxResults between pages, as botocore allows)."""
    params = sorted(
        (name, sorted(values))
        for name, values in response.querystring.items()
        if name not in ("MaxResults", "NextToken")
    )
    scope = [response.current_account, response.region, params]
    return hashlib.sha256(json.dumps(scope, default=str).encode()).hexdigest()


_HOOKS = _EmulatorHooks()


# --------------------------------------------------------------------------------------
# public SSM parameters and the images they name
# --------------------------------------------------------------------------------------

UBUNTU_2204_AMD64 = (
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
)
UBUNTU_2204_ARM64 = (
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp2/ami-id"
)
DLAMI_X86_64 = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
DLAMI_ARM64 = (
    "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)

CANONICAL_OWNER = "099720109477"
AMAZON_DLAMI_OWNER = "898082745236"


@dataclass(frozen=True)
class PublicImage:
    parameter: str
    name: str
    description: str
    architecture: str
    owner_id: str
    owner_alias: str | None
    boot_mode: str


PUBLIC_IMAGES = (
    PublicImage(
        UBUNTU_2204_AMD64,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240501",
        "Canonical, Ubuntu, 22.04 LTS, amd64 jammy image build on 2024-05-01",
        "x86_64",
        CANONICAL_OWNER,
        None,
        "legacy-bios",
    ),
    PublicImage(
        UBUNTU_2204_ARM64,
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-20240501",
        "Canonical, Ubuntu, 22.04 LTS, arm64 jammy image build on 2024-05-01",
        "arm64",
        CANONICAL_OWNER,
        None,
        "uefi",
    ),
    PublicImage(
        DLAMI_X86_64,
        "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20240501",
        "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5. NVIDIA driver 550",
        "x86_64",
        AMAZON_DLAMI_OWNER,
        "amazon",
        "legacy-bios",
    ),
    PublicImage(
        DLAMI_ARM64,
        "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20240501",
        "Supported EC2 instances: G5g. NVIDIA driver 550",
        "arm64",
        AMAZON_DLAMI_OWNER,
        "amazon",
        "uefi",
    ),
)


def public_ami_id(region: str, image: PublicImage) -> str:
    """The AMI id the fake gives ``image`` in ``region`` (stable; differs per region)."""
    digest = hashlib.sha256(f"{region}/{image.name}".encode()).hexdigest()
    return f"ami-0{digest[:16]}"


# --------------------------------------------------------------------------------------
# MotoServer
# --------------------------------------------------------------------------------------


class MotoServer(_LoopbackServer):
    """moto's server on ``127.0.0.1:<free port>`` in a thread, with a recording middleware.

    ``ecs_amis=False`` (the default) leaves out moto's ~1,200 ECS-optimized images per
    region (``moto/ec2/resources/ecs/optimized_amis``), which cost ~0.15 s per region after
    every reset; moto's other default images (``Owners=["amazon"]``, including the Amazon
    Linux images named by ``/aws/service/ami-amazon-linux-latest/*``) stay, and
    :meth:`seed_public_parameters` adds Ubuntu and DLAMI images.
    """

    def __init__(self, *, ecs_amis: bool = False) -> None:
        super().__init__()
        self.ecs_amis = ecs_amis
        self._log = _CallLog()
        self.json_handlers: dict[str, Callable[[str, dict[str, Any]], tuple[int, Any] | None]] = {}
        """service (``ssm``) → a handler answering some JSON actions (None: moto answers)."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                return

        app = _RecordingMiddleware(DomainDispatcherApplication(create_backend_app), self)
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        _HOOKS.install()
        _HOOKS.skip_ecs_amis = not self.ecs_amis
        return self._serve(server, "moto-server")

    def stop(self) -> None:
        if self._shutdown():
            _HOOKS.clear()
            _HOOKS.uninstall()

    def reset(self) -> None:
        """Forget every resource (``POST /moto-api/reset``), recorded call, throttle,
        capacity rule and spot price."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        _HOOKS.clear()
        self._throttles.clear()
        self.reset_calls()

    # -- recorded calls --------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A copy of the calls so far, oldest first."""
        return self._log.snapshot()

    def reset_calls(self) -> None:
        self._log.clear()

    def calls_for(self, service: str) -> list[str]:
        """Actions called on ``service`` (e.g. ``"ec2"``), in order."""
        return [c.action for c in self.calls if c.service == service]

    def count(self, service: str, action: str) -> int:
        return sum(1 for c in self.calls if c.service == service and c.action == action)

    def write_calls(self, prefix: str = "", service: str | None = None) -> list[Call]:
        """Mutating calls (not Describe*/Get*/List*, nor REST GET/HEAD) whose action
        starts with ``prefix``, of ``service`` or of every service."""
        return [
            c
            for c in self.calls
            if c.is_write
            and c.action.startswith(prefix)
            and (service is None or c.service == service)
        ]

    def write_actions(self, service: str | None = None) -> list[str]:
        return [c.action for c in self.write_calls(service=service)]

    # -- throttling ------------------------------------------------------------------------

    def throttle_next(
        self,
        service: str,
        action: str,
        times: int = 1,
        *,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        """Answer the next ``times`` requests of ``service``/``action`` (``"*"``: any action)
        with AWS's throttling error: ``RequestLimitExceeded`` (EC2 XML), ``Throttling``
        (other query services), ``ThrottlingException`` (JSON), ``SlowDown`` (REST, 503).
        The status is 400 unless ``status`` says otherwise; the request never reaches moto.
        """
        self._throttles.arm(service, action, times, code, status)

    # -- in-process emulator state ---------------------------------------------------------

    def seed_managed_policies(self, *names: str) -> None:
        """Give moto's IAM the AWS-managed policies named (as AWS accounts have them),
        from moto's bundled copies; loading all ~1,300 on every reset would cost seconds."""
        import json as json_

        from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
        from moto.iam.aws_managed_policies import aws_managed_policies_data
        from moto.iam.models import AWSManagedPolicy, iam_backends

        bundled = json_.loads(aws_managed_policies_data)
        backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]  # IAM is global: one partition
        for name in names:
            policy = AWSManagedPolicy.from_data(
                name, DEFAULT_ACCOUNT_ID, backend.region_name, bundled[name]
            )
            backend.managed_policies[policy.arn] = policy

    def seed_public_parameters(self, region: str) -> dict[str, str]:
        """Put AWS's public AMI parameters (``UBUNTU_2204_*``, ``DLAMI_*``) in ``region``,
        naming public images added to moto's EC2; returns parameter name → AMI id."""
        from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.amis import Ami
        from moto.ssm.models import Parameter, ssm_backends

        ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        parameters = ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters
        created = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
        seeded: dict[str, str] = {}
        for image in PUBLIC_IMAGES:
            ami_id = public_ami_id(region, image)
            if ami_id not in ec2.amis:
                location = f"{image.owner_alias or image.owner_id}/{image.name}"
                ec2.amis[ami_id] = Ami(
                    ec2,
                    ami_id,
                    name=image.name,
                    description=image.description,
                    owner_id=image.owner_id,
                    owner_alias=image.owner_alias,
                    public=True,
                    virtualization_type="hvm",
                    architecture=image.architecture,
                    creation_date=created,
                    image_location=location,
                    hypervisor="xen",
                    root_device_type="ebs",
                    root_device_name="/dev/sda1",
                    region_name=f"{region}a",
                    boot_mode=image.boot_mode,
                )
            versions = parameters[image.parameter]
            if not versions or versions[-1].value != ami_id:
                versions.append(
                    Parameter(  # type: ignore[abstract]
                        account_id=DEFAULT_ACCOUNT_ID,
                        name=image.parameter,
                        value=ami_id,
                        parameter_type="String",
                        description=None,
                        allowed_pattern=None,
                        keyid=None,
                        last_modified_date=created,
                        version=len(versions) + 1,
                        data_type="text",
                    )
                )
            seeded[image.parameter] = ami_id
        return seeded

    @contextlib.contextmanager
    def make_capacity_unavailable(
        self,
        *,
        lifecycle: str | None = "spot",
        instance_types: Iterable[str] | None = None,
        region: str | None = None,
        available: int = 0,
        error_code: str = "InsufficientInstanceCapacity",
        message: str | None = None,
    ) -> Iterator[CapacityRule]:
        """While active, EC2 Fleet launches of ``lifecycle`` (``"spot"``, ``"on-demand"``,
        or None for both) and ``instance_types`` (None: all) in ``region`` (None: all) are
        short of capacity: only ``available`` more such instances launch, in total.

        ``CreateFleet(Type="instant")`` then answers like AWS: the instances it could
        launch, and one ``Errors`` entry (``error_code``, e.g. ``VcpuLimitExceeded``) per
        launch template/overrides pool that came up short. Unlike plain moto, which only
        launches from the cheapest (first) override, a fleet under a rule tries its
        overrides in turn, as AWS tries capacity pools.
        """
        rule = CapacityRule(
            lifecycle=lifecycle,
            instance_types=frozenset(instance_types) if instance_types is not None else None,
            region=region,
            available=available,
            error_code=error_code,
            message=message,
        )
        with _HOOKS.lock:
            _HOOKS.capacity_rules.append(rule)
        try:
            yield rule
        finally:
            with _HOOKS.lock, contextlib.suppress(ValueError):
                _HOOKS.capacity_rules.remove(rule)

    def set_spot_prices(self, prices: Mapping[tuple[str, ...], float]) -> None:
        """``DescribeSpotPriceHistory`` answers these prices, keyed ``(region, instance_type)``
        or ``(region, instance_type, zone)``; others keep moto's ``0.00001``. Until reset."""
        with _HOOKS.lock:
            for key, price in prices.items():
                zone = key[2] if len(key) > 2 else None
                _HOOKS.spot_prices[(key[0], key[1], zone)] = float(price)


# --------------------------------------------------------------------------------------
# the Price List API
# --------------------------------------------------------------------------------------

REGION_LOCATIONS = {
    "us-east-1": ("US East (N. Virginia)", ""),
    "us-east-2": ("US East (Ohio)", "USE2-"),
    "us-west-1": ("US West (N. California)", "USW1-"),
    "us-west-2": ("US West (Oregon)", "USW2-"),
    "ca-central-1": ("Canada (Central)", "CAN1-"),
    "eu-west-1": ("EU (Ireland)", "EU-"),
    "eu-west-2": ("EU (London)", "EUW2-"),
    "eu-central-1": ("EU (Frankfurt)", "EUC1-"),
    "eu-north-1": ("EU (Stockholm)", "EUN1-"),
    "ap-south-1": ("Asia Pacific (Mumbai)", "APS3-"),
    "ap-northeast-1": ("Asia Pacific (Tokyo)", "APN1-"),
    "ap-southeast-1": ("Asia Pacific (Singapore)", "APS1-"),
    "ap-southeast-2": ("Asia Pacific (Sydney)", "APS2-"),
    "sa-east-1": ("South America (Sao Paulo)", "SAE1-"),
}

# Linux, shared tenancy, on-demand USD/hour (us-east-1 list prices; us-west-2 is the same).
_US_PRICES = {
    "t3.micro": 0.0104,
    "t3.medium": 0.0416,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "c5.2xlarge": 0.34,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.8048,
    "g6e.xlarge": 1.861,
    "g5g.xlarge": 0.42,
    "p3.2xlarge": 3.06,
    "p4d.24xlarge": 32.7726,
    "p4de.24xlarge": 40.9657,
    "p5.48xlarge": 98.32,
    "trn1.2xlarge": 1.34375,
    "trn1.32xlarge": 21.50,
    "inf2.xlarge": 0.7582,
}
DEFAULT_PRICES: dict[tuple[str, str], float] = {
    (region, instance_type): price
    for region in ("us-east-1", "us-west-2")
    for instance_type, price in _US_PRICES.items()
}

_GENERAL = "General purpose"
_GPU = "GPU instance"
_ASIC = "Machine Learning ASIC Instances"
# vcpu, memory, gpus, gpu memory, family
_HARDWARE: dict[str, tuple[str, str, str, str, str]] = {
    "t3.micro": ("2", "1 GiB", "", "", _GENERAL),
    "t3.medium": ("2", "4 GiB", "", "", _GENERAL),
    "m5.large": ("2", "8 GiB", "", "", _GENERAL),
    "m5.xlarge": ("4", "16 GiB", "", "", _GENERAL),
    "c5.2xlarge": ("8", "16 GiB", "", "", "Compute optimized"),
    "g4dn.xlarge": ("4", "16 GiB", "1", "16 GB", _GPU),
    "g4dn.2xlarge": ("8", "32 GiB", "1", "16 GB", _GPU),
    "g4dn.12xlarge": ("48", "192 GiB", "4", "64 GB", _GPU),
    "g5.xlarge": ("4", "16 GiB", "1", "24 GB", _GPU),
    "g5.2xlarge": ("8", "32 GiB", "1", "24 GB", _GPU),
    "g5.12xlarge": ("48", "192 GiB", "4", "96 GB", _GPU),
    "g6.xlarge": ("4", "16 GiB", "1", "24 GB", _GPU),
    "g6e.xlarge": ("4", "32 GiB", "1", "48 GB", _GPU),
    "g5g.xlarge": ("4", "8 GiB", "1", "16 GB", _GPU),
    "p3.2xlarge": ("8", "61 GiB", "1", "16 GB", _GPU),
    "p4d.24xlarge": ("96", "1,152 GiB", "8", "320 GB", _GPU),
    "p4de.24xlarge": ("96", "1,152 GiB", "8", "640 GB", _GPU),
    "p5.48xlarge": ("192", "2,048 GiB", "8", "640 GB", _GPU),
    "trn1.2xlarge": ("8", "32 GiB", "", "", _ASIC),
    "trn1.32xlarge": ("128", "512 GiB", "", "", _ASIC),
    "inf2.xlarge": ("4", "16 GiB", "", "", _ASIC),
}
# processor, clock speed, network performance, storage
_PLATFORM: dict[str, tuple[str, str, str, str]] = {
    "t3.micro": ("Intel Skylake E5 2686 v5", "3.1 GHz", "Up to 5 Gigabit", "EBS only"),
    "t3.medium": ("Intel Skylake E5 2686 v5", "3.1 GHz", "Up to 5 Gigabit", "EBS only"),
    "m5.large": ("Intel Xeon Platinum 8175", "3.1 GHz", "Up to 10 Gigabit", "EBS only"),
    "m5.xlarge": ("Intel Xeon Platinum 8175", "3.1 GHz", "Up to 10 Gigabit", "EBS only"),
    "c5.2xlarge": ("Intel Xeon Platinum 8124M", "3.4 GHz", "Up to 10 Gigabit", "EBS only"),
    "g4dn.xlarge": ("Intel Xeon Family", "2.5 GHz", "Up to 25 Gigabit", "1 x 125 NVMe SSD"),
    "g4dn.2xlarge": ("Intel Xeon Family", "2.5 GHz", "Up to 25 Gigabit", "1 x 225 NVMe SSD"),
    "g4dn.12xlarge": ("Intel Xeon Family", "2.5 GHz", "50 Gigabit", "1 x 900 NVMe SSD"),
    "g5.xlarge": ("AMD EPYC 7R32", "3.3 GHz", "Up to 10 Gigabit", "1 x 250 NVMe SSD"),
    "g5.2xlarge": ("AMD EPYC 7R32", "3.3 GHz", "Up to 10 Gigabit", "1 x 450 NVMe SSD"),
    "g5.12xlarge": ("AMD EPYC 7R32", "3.3 GHz", "40 Gigabit", "1 x 3800 NVMe SSD"),
    "g6.xlarge": ("AMD EPYC 7R13", "3.95 GHz", "Up to 10 Gigabit", "1 x 250 NVMe SSD"),
    "g6e.xlarge": ("AMD EPYC 7R13", "3.95 GHz", "Up to 20 Gigabit", "1 x 250 NVMe SSD"),
    "g5g.xlarge": ("AWS Graviton2 Processor", "2.5 GHz", "Up to 10 Gigabit", "EBS only"),
    "p3.2xlarge": ("Intel Xeon E5-2686 v4 (Broadwell)", "2.3 GHz", "Up to 10 Gigabit", "EBS only"),
    "p4d.24xlarge": ("Intel Xeon Platinum 8275L", "3 GHz", "400 Gigabit", "8 x 1000 SSD"),
    "p4de.24xlarge": ("Intel Xeon Platinum 8275L", "3 GHz", "400 Gigabit", "8 x 1000 SSD"),
    "p5.48xlarge": ("AMD EPYC 7R13", "3.7 GHz", "3200 Gigabit", "8 x 3840 SSD"),
    "trn1.2xlarge": (
        "Intel Xeon Platinum 8375C",
        "3.5 GHz",
        "Up to 12500 Megabit",
        "1 x 475 NVMe SSD",
    ),
    "trn1.32xlarge": ("Intel Xeon Platinum 8375C", "3.5 GHz", "800 Gigabit", "4 x 1900 NVMe SSD"),
    "inf2.xlarge": ("AMD EPYC 7R13", "3.6 GHz", "Up to 15 Gigabit", "EBS only"),
}

PUBLICATION = "2024-05-08T19:11:02Z"
VERSION = "20240508191102"
ON_DEMAND_TERM = "JRTCKXETXF"
RESERVED_TERM = "4NA7Y494T4"  # 1yr standard No Upfront
RATE_CODE = "6YS6EN2CT7"


def _attributes(instance_type: str) -> tuple[str, ...]:
    if instance_type in _HARDWARE:
        return _HARDWARE[instance_type] + _PLATFORM[instance_type]
    return _fallback_attributes(instance_type)


def _fallback_attributes(instance_type: str) -> tuple[str, ...]:
    try:
        from moto.ec2.models.instance_types import INSTANCE_TYPES
    except ImportError:  # pragma: no cover
        INSTANCE_TYPES = {}
    info = INSTANCE_TYPES.get(instance_type, {})
    vcpu = str(info.get("VCpuInfo", {}).get("DefaultVCpus", "NA"))
    mib = info.get("MemoryInfo", {}).get("SizeInMiB")
    memory = f"{mib / 1024:,.4g} GiB".replace(".0 ", " ") if mib else "NA"
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    gpu = str(sum(g["Count"] for g in gpus)) if gpus else ""
    gpu_mem = f"{info['GpuInfo']['TotalGpuMemoryInMiB'] // 1024} GB" if gpus else ""
    family = _GPU if gpus else _GENERAL
    return (vcpu, memory, gpu, gpu_mem, family, "NA", "NA", "NA", "EBS only")


def _sku(*parts: str) -> str:
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def _price_str(price: float) -> str:
    return f"{price:.10f}"


def product_document(
    region: str,
    instance_type: str,
    price: float,
    *,
    operating_system: str = "Linux",
    tenancy: str = "Shared",
    capacity_status: str = "Used",
    pre_installed_sw: str = "NA",
) -> dict[str, Any]:
    """One ``AmazonEC2`` price document, shaped like an element of ``PriceList``."""
    location, prefix = REGION_LOCATIONS.get(region, (region, f"{region.upper()}-"))
    vcpu, memory, gpu, gpu_mem, family, processor, clock, network, storage = _attributes(
        instance_type
    )
    usage = {
        ("Shared", "Used"): "BoxUsage",
        ("Dedicated", "Used"): "DedicatedUsage",
        ("Host", "Used"): "HostBoxUsage",
    }.get((tenancy, capacity_status))
    if capacity_status == "UnusedCapacityReservation":
        usage = "UnusedBox" if tenancy == "Shared" else "UnusedDed"
    elif capacity_status == "AllocatedCapacityReservation":
        usage = "Reservation" if tenancy == "Shared" else "DedicatedRes"
    operation = {
        ("Linux", "NA"): "RunInstances",
        ("Windows", "NA"): "RunInstances:0002",
        ("RHEL", "NA"): "RunInstances:0010",
        ("Linux", "SQL Web"): "RunInstances:0200",
    }.get((operating_system, pre_installed_sw), "RunInstances")
    license_model = "License included" if operating_system == "Windows" else "No License required"
    sku = _sku(region, instance_type, operating_system, tenancy, capacity_status, pre_installed_sw)
    attributes = {
        "enhancedNetworkingSupported": "Yes",
        "intelTurboAvailable": "No" if "AMD" in processor else "Yes",
        "memory": memory,
        "dedicatedEbsThroughput": "Up to 3500 Mbps",
        "vcpu": vcpu,
        "classicnetworkingsupport": "false",
        "capacitystatus": capacity_status,
        "locationType": "AWS Region",
        "storage": storage,
        "instanceFamily": family,
        "operatingSystem": operating_system,
        "regionCode": region,
        "physicalProcessor": processor,
        "clockSpeed": clock,
        "ecu": "NA",
        "networkPerformance": network,
        "servicename": "Amazon Elastic Compute Cloud",
        "vpcnetworkingsupport": "true",
        "instanceType": instance_type,
        "tenancy": tenancy,
        "usagetype": f"{prefix}{usage}:{instance_type}",
        "normalizationSizeFactor": "NA",
        "processorFeatures": "AVX; AVX2",
        "servicecode": "AmazonEC2",
        "licenseModel": license_model,
        "currentGeneration": "Yes",
        "preInstalledSw": pre_installed_sw,
        "location": location,
        "processorArchitecture": "64-bit",
        "marketoption": "OnDemand",
        "operation": operation,
        "availabilityzone": "NA",
    }  # fmt: skip
    if gpu:
        attributes["gpu"] = gpu
        attributes["gpuMemory"] = gpu_mem
    kind = {
        "UnusedCapacityReservation": "Unused Reservation ",
        "AllocatedCapacityReservation": "Reservation ",
    }.get(capacity_status, "Dedicated " if tenancy == "Dedicated" else "On Demand ")
    sw = "" if pre_installed_sw == "NA" else f" with {pre_installed_sw}"
    what = f"{operating_system}{sw} {instance_type} Instance Hour"
    reserved_price = round(price * 0.63, 4)
    return {
        "product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": _term(sku, ON_DEMAND_TERM, "Hrs", f"${price:.4g} per {kind}{what}", price),
            "Reserved": _term(
                sku,
                RESERVED_TERM,
                "Hrs",
                f"{operating_system} ({instance_type}), No Upfront",
                reserved_price,
                {
                    "LeaseContractLength": "1yr",
                    "OfferingClass": "standard",
                    "PurchaseOption": "No Upfront",
                },
            ),
        },
        "version": VERSION,
        "publicationDate": PUBLICATION,
    }


def _term(
    sku: str,
    term: str,
    unit: str,
    description: str,
    price: float,
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One term of a price document (``OnDemand`` or ``Reserved``): a single rate."""
    code = f"{sku}.{term}.{RATE_CODE}"
    return {
        f"{sku}.{term}": {
            "priceDimensions": {
                code: {
                    "unit": unit,
                    "endRange": "Inf",
                    "description": description,
                    "appliesTo": [],
                    "rateCode": code,
                    "beginRange": "0",
                    "pricePerUnit": {"USD": _price_str(price)},
                }
            },
            "sku": sku,
            "effectiveDate": "2024-05-01T00:00:00Z",
            "offerTermCode": term,
            "termAttributes": attributes or {},
        }
    }


def _storage_document(region: str, volume: str, price: float) -> dict[str, Any]:
    location, prefix = REGION_LOCATIONS.get(region, (region, f"{region.upper()}-"))
    sku = _sku(region, "storage", volume)
    return {
        "product": {
            "productFamily": "Storage",
            "attributes": {
                "maxThroughputvolume": "1000 MiB/s",
                "volumeType": "General Purpose",
                "maxIopsvolume": "16000",
                "usagetype": f"{prefix}EBS:VolumeUsage.{volume}",
                "locationType": "AWS Region",
                "maxVolumeSize": "16 TiB",
                "storageMedia": "SSD-backed",
                "regionCode": region,
                "servicecode": "AmazonEC2",
                "volumeApiName": volume,
                "location": location,
                "servicename": "Amazon Elastic Compute Cloud",
                "operation": "",
            },
            "sku": sku,
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": _term(
                sku,
                ON_DEMAND_TERM,
                "GB-Mo",
                f"${price} per GB-month of {volume} provisioned storage",
                price,
            )
        },
        "version": VERSION,
        "publicationDate": PUBLICATION,
    }


def build_price_list(prices: Mapping[tuple[str, str], float]) -> list[dict[str, Any]]:
    """Documents for ``prices`` (Linux/Shared/Used/NA on-demand), each with decoys that a
    careless filter picks up instead: Windows, Dedicated tenancy, SQL Web, unused and
    allocated ($0) capacity reservations; plus EBS storage products. Deterministic order,
    decoys interleaved."""
    documents: list[dict[str, Any]] = []
    for (region, instance_type), price in sorted(prices.items()):
        variants: list[dict[str, Any]] = [
            {"operating_system": "Windows", "extra": 0.046 * _vcpus(instance_type)},
            {"tenancy": "Dedicated", "factor": 1.1},
            {"capacity_status": "AllocatedCapacityReservation", "factor": 0.0},
            {},
            {"pre_installed_sw": "SQL Web", "extra": 0.017 * _vcpus(instance_type)},
            {"capacity_status": "UnusedCapacityReservation"},
        ]
        for variant in variants:
            factor = variant.pop("factor", 1.0)
            extra = variant.pop("extra", 0.0)
            documents.append(
                product_document(region, instance_type, price * factor + extra, **variant)
            )
    for region in sorted({region for region, _ in prices}):
        documents.append(_storage_document(region, "gp3", 0.08))
        documents.append(_storage_document(region, "gp2", 0.10))
    random.Random(20240508).shuffle(documents)
    return documents


def _vcpus(instance_type: str) -> int:
    attributes = _attributes(instance_type)
    return int(attributes[0]) if attributes[0].isdigit() else 4


def _field_value(document: Mapping[str, Any], name: str) -> str | None:
    product = document["product"]
    if name == "ServiceCode":
        return str(document["serviceCode"])
    if name in ("productFamily", "sku"):
        return str(product[name])
    value = product["attributes"].get(name)
    return None if value is None else str(value)


def filter_matches(document: Mapping[str, Any], filters: Iterable[Mapping[str, str]]) -> bool:
    """AWS's ``GetProducts`` filter semantics (exact field names and values)."""
    for f in filters:
        kind, value = f.get("Type"), f.get("Value", "")
        actual = _field_value(document, f.get("Field", ""))
        if actual is None:
            return False
        values = [v.strip() for v in value.split(",")]
        if kind in ("TERM_MATCH", "EQUALS"):
            ok = actual == value
        elif kind == "CONTAINS":
            ok = value in actual
        elif kind == "ANY_OF":
            ok = actual in values
        elif kind == "NONE_OF":
            ok = actual not in values
        else:
            raise _PricingError("InvalidParameterException", f"Invalid filter type: {kind}")
        if not ok:
            return False
    return True


class _PricingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PricingRequest:
    action: str
    params: dict[str, Any]


class PricingServer(_LoopbackServer):
    """A fake ``api.pricing`` endpoint (JSON 1.1, ``AWSPriceListService.*``) on 127.0.0.1.

    ``prices`` maps ``(region, instance_type)`` to the Linux on-demand USD/hour price; it is
    laid over :data:`DEFAULT_PRICES` unless ``defaults=False``.
    """

    MAX_RESULTS = 100
    SERVICE = "pricing"

    def __init__(
        self, prices: Mapping[tuple[str, str], float] | None = None, *, defaults: bool = True
    ) -> None:
        super().__init__()
        self._base = {**(DEFAULT_PRICES if defaults else {}), **(prices or {})}
        self._lock = threading.Lock()
        self._requests: list[PricingRequest] = []
        self.prices: dict[tuple[str, str], float] = {}
        self.documents: list[dict[str, Any]] = []
        self.set_prices(self._base, replace=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                status, payload = fake._handle(target, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                if status >= 400:
                    self.send_header("x-amzn-ErrorType", f"{payload['__type']}:")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return self._serve(server, "pricing-server")

    # -- state -----------------------------------------------------------------------------

    def set_prices(self, prices: Mapping[tuple[str, str], float], *, replace: bool = False) -> None:
        """Change the table (``replace=True``: this table only) and rebuild the documents."""
        with self._lock:
            self.prices = dict(prices) if replace else {**self.prices, **prices}
            self.documents = build_price_list(self.prices)

    def reset(self) -> None:
        """Back to the constructor's table; forget requests and throttles."""
        self.set_prices(self._base, replace=True)
        with self._lock:
            self._requests.clear()
        self._throttles.clear()

    @property
    def requests(self) -> list[PricingRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, action: str = "GetProducts") -> int:
        return sum(1 for r in self.requests if r.action == action)

    def reset_calls(self) -> None:
        with self._lock:
            self._requests.clear()

    def throttle_next(self, action: str = "GetProducts", times: int = 1) -> None:
        """The next ``times`` requests of ``action`` (``"*"``: any action) answer 400
        ``ThrottlingException``."""
        self._throttles.arm(self.SERVICE, action, times, None, None)

    # -- the API ---------------------------------------------------------------------------

    def _handle(self, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        prefix, _, action = target.partition(".")
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = None
        with self._lock:
            self._requests.append(PricingRequest(action, params or {}))
        throttle = self._throttles.take(self.SERVICE, action)
        if throttle is not None:
            return throttle.status or 400, _json_throttle(throttle.code)
        if prefix != "AWSPriceListService" or not isinstance(params, dict):
            return 400, {"__type": "UnknownOperationException", "message": target}
        handler = {
            "GetProducts": self._get_products,
            "DescribeServices": self._describe_services,
            "GetAttributeValues": self._get_attribute_values,
        }.get(action)
        if handler is None:
            return 400, {"__type": "UnknownOperationException", "message": target}
        try:
            return 200, handler(params)
        except _PricingError as error:
            return 400, {"__type": error.code, "Message": error.message}

    def _page(
        self, items: list[Any], params: Mapping[str, Any], query: object
    ) -> tuple[list[Any], str | None]:
        limit = int(params.get("MaxResults") or self.MAX_RESULTS)
        if not 1 <= limit <= self.MAX_RESULTS:
            raise _PricingError(
                "InvalidParameterException", f"MaxResults must be between 1 and {self.MAX_RESULTS}"
            )
        fingerprint = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]
        start = 0
        if params.get("NextToken"):
            try:
                token = json.loads(base64.urlsafe_b64decode(params["NextToken"].encode()))
                start = int(token["offset"])
                valid = token["query"] == fingerprint
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                raise _PricingError("InvalidNextTokenException", "The NextToken is invalid.")
        page = items[start : start + limit]
        end = start + len(page)
        if end >= len(items):
            return page, None
        token = json.dumps({"offset": end, "query": fingerprint, "nonce": uuid.uuid4().hex})
        return page, base64.urlsafe_b64encode(token.encode()).decode()

    def _get_products(self, params: Mapping[str, Any]) -> dict[str, Any]:
        service = params.get("ServiceCode")
        if not service:
            raise _PricingError("InvalidParameterException", "ServiceCode is required")
        if params.get("FormatVersion", "aws_v1") != "aws_v1":
            raise _PricingError("InvalidParameterException", "Invalid FormatVersion")
        filters = params.get("Filters") or []
        with self._lock:
            documents = self.documents
        matching = [
            json.dumps(d, separators=(",", ":"))
            for d in documents
            if d["serviceCode"] == service and filter_matches(d, filters)
        ]
        page, token = self._page(matching, params, [service, filters])
        result: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": page}
        if token:
            result["NextToken"] = token
        return result

    def _attribute_names(self) -> list[str]:
        with self._lock:
            documents = self.documents
        return sorted({name for d in documents for name in d["product"]["attributes"]})

    def _describe_services(self, params: Mapping[str, Any]) -> dict[str, Any]:
        code = params.get("ServiceCode")
        services = [{"ServiceCode": "AmazonEC2", "AttributeNames": self._attribute_names()}]
        if code:
            services = [s for s in services if s["ServiceCode"] == code]
        page, token = self._page(services, params, ["services", code])
        result: dict[str, Any] = {"Services": page, "FormatVersion": "aws_v1"}
        if token:
            result["NextToken"] = token
        return result

    def _get_attribute_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name = params.get("AttributeName", "")
        with self._lock:
            documents = self.documents
        values = sorted(
            {
                str(d["product"]["attributes"][name])
                for d in documents
                if d["serviceCode"] == params.get("ServiceCode")
                and name in d["product"]["attributes"]
            }
        )
        page, token = self._page(
            [{"Value": v} for v in values], params, ["values", params.get("ServiceCode"), name]
        )
        result: dict[str, Any] = {"AttributeValues": page}
        if token:
            result["NextToken"] = token
        return result


def parse_on_demand_price(document: str | Mapping[str, Any]) -> float:
    """The way a client reads an hourly on-demand USD price from a ``PriceList`` entry."""
    data = json.loads(document) if isinstance(document, str) else document
    (term,) = data["terms"]["OnDemand"].values()
    (dimension,) = term["priceDimensions"].values()
    return float(dimension["pricePerUnit"]["USD"])


# --------------------------------------------------------------------------------------
# what the aws_env fixture yields
# --------------------------------------------------------------------------------------


@dataclass
class AwsEnv:
    """The fakes of one test: ``moto`` (reset for the test), ``pricing`` (reset too),
    ``amis[region][parameter name]`` the seeded public AMI ids, ``cache_dir``."""

    moto: MotoServer
    pricing: PricingServer
    amis: dict[str, dict[str, str]]
    cache_dir: Path
    regions: tuple[str, ...] = ("us-east-1", "us-west-2")

    def ami(self, parameter: str, region: str = "us-east-1") -> str:
        return self.amis[region][parameter]


def ec2_user_data(instance: Instance) -> str:
    """The user-data script EC2 holds for an instance (what cloud-init would run)."""
    import boto3

    ec2 = boto3.client("ec2", region_name=instance.region or "us-east-1")
    encoded = ec2.describe_instance_attribute(InstanceId=instance.id, Attribute="userData")
    return base64.b64decode(encoded["UserData"]["Value"]).decode()
