"""The AWS fakes (tests/aws_fakes.py), exercised with real boto3 over HTTP."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
from typing import Any

import boto3
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.aws_fakes import (
    DEFAULT_PRICES,
    DLAMI_ARM64,
    DLAMI_X86_64,
    UBUNTU_2204_AMD64,
    UBUNTU_2204_ARM64,
    AwsEnv,
    Call,
    parse_on_demand_price,
)

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})

LINUX_ON_DEMAND = [
    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
]


def _launch_template(ec2: Any, ami: str, name: str = "sky") -> str:
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": ami, "InstanceType": "g5.xlarge"},
    )
    return str(template["LaunchTemplate"]["LaunchTemplateId"])


def _instant_fleet(
    ec2: Any, template_id: str, count: int, capacity_type: str, types: list[str]
) -> dict[str, Any]:
    response: dict[str, Any] = ec2.create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template_id,
                    "Version": "$Latest",
                },
                "Overrides": [{"InstanceType": t} for t in types],
            }
        ],
        TargetCapacitySpecification={
            "TotalTargetCapacity": count,
            "DefaultTargetCapacityType": capacity_type,
        },
    )
    return response


def _instance_ids(response: dict[str, Any]) -> list[str]:
    return [i for entry in response.get("Instances", []) for i in entry["InstanceIds"]]


# -- environment and recording ------------------------------------------------------------


def test_environment_points_boto3_at_the_fakes(aws_env: AwsEnv) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == aws_env.moto.url
    assert os.environ["AWS_ENDPOINT_URL_PRICING"] == aws_env.pricing.url
    assert "AWS_PROFILE" not in os.environ
    assert os.environ["SKYWARD_CACHE_DIR"] == str(aws_env.cache_dir)
    assert aws_env.moto.url.startswith("http://127.0.0.1:")
    assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"


def test_calls_are_recorded_per_service_and_action(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2")
    ec2.describe_instances()
    ec2.run_instances(
        ImageId=aws_env.ami(UBUNTU_2204_AMD64), MinCount=1, MaxCount=1, InstanceType="t3.micro"
    )
    boto3.client("ssm").get_parameter(Name=UBUNTU_2204_AMD64)
    boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")
    boto3.client("s3").create_bucket(Bucket="skyward-bucket")
    ec2.describe_instances()

    moto = aws_env.moto
    assert moto.calls == [
        Call("ec2", "DescribeInstances"),
        Call("ec2", "RunInstances"),
        Call("ssm", "GetParameter"),
        Call("iam", "CreateRole"),
        Call("s3", "PUT /skyward-bucket"),
        Call("ec2", "DescribeInstances"),
    ]
    assert moto.calls[0].region == "us-east-1"
    assert moto.calls_for("ec2") == ["DescribeInstances", "RunInstances", "DescribeInstances"]
    assert moto.count("ec2", "DescribeInstances") == 2
    assert moto.write_actions() == ["RunInstances", "CreateRole", "PUT /skyward-bucket"]
    assert moto.write_actions("ec2") == ["RunInstances"]
    assert [c.action for c in moto.write_calls("Create")] == ["CreateRole"]
    moto.reset_calls()
    assert moto.calls == []


def test_reset_forgets_resources(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2")
    ec2.run_instances(ImageId=aws_env.ami(UBUNTU_2204_AMD64), MinCount=1, MaxCount=1)
    assert ec2.describe_instances()["Reservations"]
    aws_env.moto.reset()
    assert ec2.describe_instances()["Reservations"] == []


# -- throttling ---------------------------------------------------------------------------


def test_ec2_throttling_is_retried_by_standard_mode(aws_env: AwsEnv) -> None:
    aws_env.moto.throttle_next("ec2", "DescribeInstances", times=2)
    ec2 = boto3.client("ec2", config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
    response = ec2.describe_instances()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    calls = aws_env.moto.calls
    assert [c.action for c in calls] == ["DescribeInstances"] * 3
    assert [c.throttled for c in calls] == [True, True, False]


def test_ec2_throttling_error_is_aws_shaped(aws_env: AwsEnv) -> None:
    aws_env.moto.throttle_next("ec2", "RunInstances")
    ec2 = boto3.client("ec2", config=NO_RETRY)
    with pytest.raises(ClientError) as raised:
        ec2.run_instances(ImageId=aws_env.ami(UBUNTU_2204_AMD64), MinCount=1, MaxCount=1)
    error = raised.value.response
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert ec2.describe_instances()["Reservations"] == []  # never reached moto
    ec2.run_instances(ImageId=aws_env.ami(UBUNTU_2204_AMD64), MinCount=1, MaxCount=1)


def test_json_and_query_throttling(aws_env: AwsEnv) -> None:
    aws_env.moto.throttle_next("ssm", "GetParameter", times=1)
    ssm = boto3.client("ssm", config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    assert ssm.get_parameter(Name=UBUNTU_2204_AMD64)["ResponseMetadata"]["RetryAttempts"] == 1

    aws_env.moto.throttle_next("ssm", "GetParameters", times=1)
    with pytest.raises(ClientError) as raised:
        boto3.client("ssm", config=NO_RETRY).get_parameters(Names=[UBUNTU_2204_AMD64])
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"

    aws_env.moto.throttle_next("iam", "*", times=1)
    with pytest.raises(ClientError) as raised:
        boto3.client("iam", config=NO_RETRY).list_roles()
    assert raised.value.response["Error"]["Code"] == "Throttling"


# -- public parameters --------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us-east-1", "us-west-2"])
def test_public_parameters_name_known_images(aws_env: AwsEnv, region: str) -> None:
    ssm = boto3.client("ssm", region_name=region)
    ec2 = boto3.client("ec2", region_name=region)
    names = [UBUNTU_2204_AMD64, UBUNTU_2204_ARM64, DLAMI_X86_64, DLAMI_ARM64]
    found = {p["Name"]: p["Value"] for p in ssm.get_parameters(Names=names)["Parameters"]}
    assert found == aws_env.amis[region]
    assert ssm.get_parameter(Name=DLAMI_X86_64)["Parameter"]["Value"] == found[DLAMI_X86_64]

    images = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=list(found.values()))["Images"]}
    assert images[found[UBUNTU_2204_AMD64]]["Architecture"] == "x86_64"
    assert images[found[UBUNTU_2204_ARM64]]["Architecture"] == "arm64"
    assert images[found[DLAMI_ARM64]]["Architecture"] == "arm64"
    assert "Ubuntu 22.04" in images[found[DLAMI_X86_64]]["Name"]
    assert images[found[UBUNTU_2204_AMD64]]["OwnerId"] == "099720109477"
    assert images[found[UBUNTU_2204_AMD64]]["Public"] is True


def test_public_amis_differ_per_region(aws_env: AwsEnv) -> None:
    east, west = aws_env.amis["us-east-1"], aws_env.amis["us-west-2"]
    assert set(east) == set(west)
    assert not set(east.values()) & set(west.values())


# -- pricing ------------------------------------------------------------------------------


def test_pricing_term_match_finds_exactly_the_linux_on_demand_price(aws_env: AwsEnv) -> None:
    pricing = boto3.client("pricing", region_name="us-east-1")
    filters = [
        *LINUX_ON_DEMAND,
        {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "g5.xlarge"},
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
    ]
    response = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters)
    assert response["FormatVersion"] == "aws_v1"
    assert "NextToken" not in response
    (document,) = response["PriceList"]
    assert isinstance(document, str)  # AWS sends each product as a JSON string
    product = json.loads(document)
    assert product["product"]["attributes"]["location"] == "US East (N. Virginia)"
    assert product["product"]["attributes"]["vcpu"] == "4"
    assert parse_on_demand_price(document) == pytest.approx(1.006)
    assert aws_env.pricing.count("GetProducts") == 1


def test_pricing_decoys_catch_careless_filters(aws_env: AwsEnv) -> None:
    pricing = boto3.client("pricing", region_name="us-east-1")
    careless = [
        {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "g5.xlarge"},
        {"Type": "TERM_MATCH", "Field": "location", "Value": "US East (N. Virginia)"},
    ]
    documents = pricing.get_products(ServiceCode="AmazonEC2", Filters=careless)["PriceList"]
    prices = sorted(parse_on_demand_price(d) for d in documents)
    assert len(prices) == 6
    assert prices[0] == 0.0  # an allocated capacity reservation
    assert max(prices) > 1.006


def test_pricing_any_of_and_pagination(aws_env: AwsEnv) -> None:
    pricing = boto3.client("pricing", region_name="us-east-1")
    filters = [
        *LINUX_ON_DEMAND,
        {"Type": "ANY_OF", "Field": "instanceType", "Value": "g5.xlarge, p5.48xlarge,t3.micro"},
        {"Type": "EQUALS", "Field": "regionCode", "Value": "us-west-2"},
    ]
    documents = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters)["PriceList"]
    found = {
        json.loads(d)["product"]["attributes"]["instanceType"]: parse_on_demand_price(d)
        for d in documents
    }
    assert found == pytest.approx({"g5.xlarge": 1.006, "p5.48xlarge": 98.32, "t3.micro": 0.0104})

    aws_env.pricing.reset_calls()
    paginator = pricing.get_paginator("get_products")
    everything = [
        *LINUX_ON_DEMAND,
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
    ]
    pages = list(
        paginator.paginate(
            ServiceCode="AmazonEC2", Filters=everything, PaginationConfig={"PageSize": 5}
        )
    )
    listed = [d for page in pages for d in page["PriceList"]]
    types = {t for region, t in DEFAULT_PRICES if region == "us-east-1"}
    assert len(listed) == len(types)  # every default instance type, once
    assert {json.loads(d)["product"]["attributes"]["instanceType"] for d in listed} == types
    assert len(pages) == math.ceil(len(types) / 5)
    assert aws_env.pricing.count("GetProducts") == len(pages)


def test_pricing_errors_and_custom_prices(aws_env: AwsEnv) -> None:
    pricing = boto3.client("pricing", region_name="us-east-1", config=NO_RETRY)
    with pytest.raises(ClientError) as raised:
        pricing.get_products(ServiceCode="AmazonEC2", NextToken="bogus")
    assert raised.value.response["Error"]["Code"] == "InvalidNextTokenException"

    aws_env.pricing.set_prices({("eu-west-1", "g5.xlarge"): 1.123})
    filters = [
        *LINUX_ON_DEMAND,
        {"Type": "TERM_MATCH", "Field": "location", "Value": "EU (Ireland)"},
    ]
    (document,) = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters)["PriceList"]
    assert parse_on_demand_price(document) == pytest.approx(1.123)

    aws_env.pricing.throttle_next("GetProducts")
    with pytest.raises(ClientError) as raised:
        pricing.get_products(ServiceCode="AmazonEC2", Filters=filters)
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"

    (service,) = pricing.describe_services(ServiceCode="AmazonEC2")["Services"]
    assert "instanceType" in service["AttributeNames"]
    assert aws_env.moto.calls == []  # pricing never reaches moto


# -- EC2 Fleet capacity and spot prices ---------------------------------------------------


def test_spot_capacity_unavailable_in_instant_fleet(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2")
    template = _launch_template(ec2, aws_env.ami(DLAMI_X86_64))
    with aws_env.moto.make_capacity_unavailable(lifecycle="spot") as rule:
        spot = _instant_fleet(ec2, template, 2, "spot", ["g5.xlarge"])
        on_demand = _instant_fleet(ec2, template, 2, "on-demand", ["g5.xlarge"])
    assert _instance_ids(spot) == []
    (error,) = spot["Errors"]
    assert error["ErrorCode"] == "InsufficientInstanceCapacity"
    assert error["Lifecycle"] == "spot"
    assert error["LaunchTemplateAndOverrides"]["Overrides"] == {"InstanceType": "g5.xlarge"}
    assert len(_instance_ids(on_demand)) == 2
    assert "Errors" not in on_demand or on_demand["Errors"] == []
    assert rule.refused == 2

    after = _instant_fleet(ec2, template, 1, "spot", ["g5.xlarge"])
    assert len(_instance_ids(after)) == 1


def test_partial_fleet_and_per_type_capacity(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2")
    template = _launch_template(ec2, aws_env.ami(DLAMI_X86_64))
    with aws_env.moto.make_capacity_unavailable(lifecycle=None, available=1):
        partial = _instant_fleet(ec2, template, 3, "on-demand", ["g5.xlarge"])
    assert len(_instance_ids(partial)) == 1
    assert [e["Lifecycle"] for e in partial["Errors"]] == ["on-demand"]

    with aws_env.moto.make_capacity_unavailable(lifecycle="spot", instance_types=["g5.xlarge"]):
        other = _instant_fleet(ec2, template, 2, "spot", ["g5.xlarge", "g6.xlarge"])
    assert {e["InstanceType"] for e in other["Instances"]} == {"g6.xlarge"}
    assert len(_instance_ids(other)) == 2
    assert [e["LaunchTemplateAndOverrides"]["Overrides"] for e in other["Errors"]] == [
        {"InstanceType": "g5.xlarge"}
    ]

    with aws_env.moto.make_capacity_unavailable(
        lifecycle="on-demand", error_code="VcpuLimitExceeded"
    ):
        quota = _instant_fleet(ec2, template, 1, "on-demand", ["g5.xlarge"])
    assert quota["Errors"][0]["ErrorCode"] == "VcpuLimitExceeded"


def test_spot_prices_can_be_set(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2")
    aws_env.moto.set_spot_prices(
        {("us-east-1", "g5.xlarge"): 0.4123, ("us-east-1", "g5.xlarge", "us-east-1b"): 0.39}
    )
    history = ec2.describe_spot_price_history(InstanceTypes=["g5.xlarge", "g6.xlarge"])
    prices = {
        (h["InstanceType"], h["AvailabilityZone"]): h["SpotPrice"]
        for h in history["SpotPriceHistory"]
    }
    assert prices[("g5.xlarge", "us-east-1a")] == "0.412300"
    assert prices[("g5.xlarge", "us-east-1b")] == "0.390000"
    assert prices[("g6.xlarge", "us-east-1a")] == "0.00001"  # moto's own


# -- EC2 paging ---------------------------------------------------------------------------

# action, result key, largest page (botocore: DITMaxResults, DITOMaxResults), extra params
PAGED = [
    pytest.param("describe_instance_types", "InstanceTypes", 100, {}, id="instance-types"),
    pytest.param(
        "describe_instance_type_offerings",
        "InstanceTypeOfferings",
        1000,
        {"LocationType": "availability-zone"},
        id="offerings",
    ),
]


def _unpaged(region: str, method: str, params: dict[str, Any]) -> list[str]:
    """Every item moto has for the request, straight from its backend (never paged)."""
    from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    if method == "describe_instance_types":
        return _keys(backend.describe_instance_types())
    return _keys(backend.describe_instance_type_offerings(params.get("LocationType")))


def _keys(items: list[Any]) -> list[str]:
    """An instance type, or an offering: the type and where it is sold."""
    return [f"{item['InstanceType']}@{item.get('Location', '')}" for item in items]


def _walk(ec2: Any, method: str, params: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Every page, following NextToken by hand rather than through botocore's paginator."""
    call = getattr(ec2, method)
    pages: list[dict[str, Any]] = [call(MaxResults=size, **params)]
    while "NextToken" in pages[-1]:
        pages.append(call(MaxResults=size, NextToken=pages[-1]["NextToken"], **params))
    return pages


@pytest.mark.parametrize(("method", "key", "largest", "params"), PAGED)
def test_ec2_catalog_pages_cover_the_unpaged_answer(
    aws_env: AwsEnv, method: str, key: str, largest: int, params: dict[str, Any]
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    everything = _unpaged("us-east-1", method, params)
    assert len(everything) > largest, "the fake must have more than one page to give"

    size = 37  # not a divisor of the total: the last page is short
    pages = _walk(ec2, method, params, size)
    assert [len(p[key]) for p in pages[:-1]] == [size] * (len(pages) - 1)
    assert 0 < len(pages[-1][key]) <= size
    assert len(pages) == math.ceil(len(everything) / size)
    listed = [k for page in pages for k in _keys(page[key])]
    assert listed == everything  # in order, none twice, none left out
    tokens = [p["NextToken"] for p in pages[:-1]]
    assert len(set(tokens)) == len(tokens)
    action = method.title().replace("_", "")
    assert aws_env.moto.count("ec2", action) == len(pages)


@pytest.mark.parametrize(("method", "key", "largest", "params"), PAGED)
def test_ec2_page_size_defaults_to_the_largest(
    aws_env: AwsEnv, method: str, key: str, largest: int, params: dict[str, Any]
) -> None:
    ec2: Any = boto3.client("ec2", region_name="us-east-1")  # the operation is a parameter
    first = getattr(ec2, method)(**params)
    assert len(first[key]) == largest
    assert first["NextToken"]
    full = getattr(ec2, method)(MaxResults=largest, **params)
    assert _keys(full[key]) == _keys(first[key])
    paginated = ec2.get_paginator(method).paginate(**params)
    listed = [k for page in paginated for k in _keys(page[key])]
    assert listed == _unpaged("us-east-1", method, params)


@pytest.mark.parametrize(("method", "key", "largest", "params"), PAGED)
def test_ec2_max_results_out_of_range_is_invalid_parameter_value(
    aws_env: AwsEnv, method: str, key: str, largest: int, params: dict[str, Any]
) -> None:
    # botocore refuses MaxResults below the model's minimum before sending it.
    unchecked = Config(parameter_validation=False, retries={"total_max_attempts": 1})
    ec2 = boto3.client("ec2", region_name="us-east-1", config=unchecked)
    for bad in (4, largest + 1, 0):
        with pytest.raises(ClientError) as raised:
            getattr(ec2, method)(MaxResults=bad, **params)
        error = raised.value.response
        assert error["Error"]["Code"] == "InvalidParameterValue", bad
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert len(getattr(ec2, method)(MaxResults=5, **params)[key]) == 5
    assert len(getattr(ec2, method)(MaxResults=largest, **params)[key]) == largest


@pytest.mark.parametrize(("method", "key", "largest", "params"), PAGED)
def test_ec2_tokens_belong_to_their_query(
    aws_env: AwsEnv, method: str, key: str, largest: int, params: dict[str, Any]
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1", config=NO_RETRY)
    first = getattr(ec2, method)(MaxResults=10, **params)
    token = first["NextToken"]

    # A client may change the page size midway; the token still says where it stopped.
    second = getattr(ec2, method)(MaxResults=25, NextToken=token, **params)
    assert len(second[key]) == 25
    assert _keys(second[key]) == _unpaged("us-east-1", method, params)[10:35]
    again = getattr(ec2, method)(MaxResults=25, NextToken=token, **params)
    assert _keys(again[key]) == _keys(second[key]), "a token may be reused"
    # Opaque: the same position is handed out under a new token, not an encoded offset.
    assert getattr(ec2, method)(MaxResults=10, **params)["NextToken"] != token

    narrower = [{"Name": "instance-type", "Values": ["m5.large", "g5.xlarge"]}]
    west = boto3.client("ec2", region_name="us-west-2", config=NO_RETRY)
    attempts: list[tuple[Any, dict[str, Any]]] = [
        (ec2, {"NextToken": "bogus"}),
        (ec2, {"NextToken": token[:-4] + "AAA="}),
        (ec2, {"NextToken": token, "Filters": narrower}),  # another query
        (west, {"NextToken": token}),  # another region
    ]
    for client, extra in attempts:
        with pytest.raises(ClientError) as raised:
            getattr(client, method)(**params, **extra)
        assert raised.value.response["Error"]["Code"] == "InvalidPaginationToken", extra

    aws_env.moto.reset()
    with pytest.raises(ClientError) as raised:
        getattr(ec2, method)(NextToken=token, **params)
    assert raised.value.response["Error"]["Code"] == "InvalidPaginationToken", "reset forgets"


def test_ec2_named_instance_types_are_paged_too(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    # list[Any]: the boto3 stubs accept only literal type names
    wanted: list[Any] = [
        "g5.xlarge",
        "g5.2xlarge",
        "g5.12xlarge",
        "m5.large",
        "m5.xlarge",
        "t3.micro",
    ]
    pages = list(
        ec2.get_paginator("describe_instance_types").paginate(
            InstanceTypes=wanted, PaginationConfig={"PageSize": 5}
        )
    )
    assert [len(p["InstanceTypes"]) for p in pages] == [5, 1]
    assert sorted(t["InstanceType"] for p in pages for t in p["InstanceTypes"]) == sorted(wanted)


# -- network ------------------------------------------------------------------------------


def test_fakes_listen_on_loopback_only(aws_env: AwsEnv) -> None:
    ports = {aws_env.moto.port, aws_env.pricing.port}
    listening = [
        c
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    ]
    assert {c.laddr.port for c in listening} == ports
    for connection in listening:
        assert ipaddress.ip_address(connection.laddr.ip).is_loopback, connection

    outside = [
        a.address
        for addresses in psutil.net_if_addrs().values()
        for a in addresses
        if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
    ]
    for address in outside:
        for port in ports:
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
