"""The AWS provider against moto's server and the fake Pricing API: real boto3 over HTTP."""

from __future__ import annotations

import subprocess
from typing import Any

import boto3
import pytest

import skyward as sky
from skyward.errors import CapacityError, ConfigurationError, ProvisioningError
from skyward.spec import build_spec
from tests.aws_fakes import DLAMI_X86_64, UBUNTU_2204_AMD64, UBUNTU_2204_ARM64, AwsEnv
from tests.cloud_checks import launch

pytestmark = pytest.mark.usefixtures("fresh_plugins", "warm_catalog")

_CATALOG: dict[str, str] = {}


@pytest.fixture
def warm_catalog(aws_env: AwsEnv) -> None:
    """Share the (unchanging) DescribeInstanceTypes cache file between tests, as a user's
    disk cache would be shared between pools; each test still starts with no calls."""
    from skyward_aws.catalog import load_instance_types
    from skyward_aws.session import cache_dir

    name = "instance-types-us-east-1.json"
    if name not in _CATALOG:
        load_instance_types(boto3.client("ec2", region_name="us-east-1"), "us-east-1", cache_dir())
        _CATALOG[name] = (cache_dir() / name).read_text()
    target = cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_CATALOG[name])
    aws_env.moto.reset_calls()


def _provider(**options: Any) -> Any:
    options.setdefault("ssh_cidr", "127.0.0.1/32")
    return sky.AWS(**options).create()  # type: ignore[attr-defined]


def _launch(provider: Any, spec: Any, pool_id: str = "sky-test") -> tuple[Any, list[Any]]:
    return launch(provider, spec, pool_id)


def _running(pool_id: str) -> list[str]:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag:skyward:pool", "Values": [pool_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"region": "us-east-9"}, "region"),
        ({"ami": "ami-xyz"}, "ami"),
        ({"subnet_id": "sub-1"}, "subnet_id"),
        ({"security_group_id": "group"}, "security_group_id"),
        ({"instance_profile_arn": "profile"}, "instance_profile_arn"),
        ({"instance_timeout": 0}, "instance_timeout"),
        ({"allocation_strategy": "random"}, "allocation_strategy"),
    ],
)
def test_bad_aws_parameters_are_clear_errors_with_no_aws_calls(
    aws_env: AwsEnv, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        sky.AWS(**options)  # type: ignore[attr-defined]
    assert caught.value.field == field
    assert aws_env.moto.calls == []


def test_unknown_region_suggests_the_closest(aws_env: AwsEnv) -> None:
    with pytest.raises(ConfigurationError, match="us-east-1"):
        sky.AWS(region="us-eats-1")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"accelerator": "H10"}, "accelerator"),
        ({"allocation": "sometimes"}, "allocation"),
    ],
)
def test_bad_pool_parameters_on_aws_make_no_aws_call(
    aws_env: AwsEnv, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        sky.ComputePool(provider=sky.AWS(), **options)  # type: ignore[attr-defined]
    assert caught.value.field == field
    assert aws_env.moto.calls == []
    assert aws_env.pricing.requests == []


def test_negative_volume_size_is_refused_before_any_call(aws_env: AwsEnv) -> None:
    with pytest.raises(ConfigurationError) as caught:
        sky.ComputePool(
            provider=sky.AWS(),  # type: ignore[attr-defined]
            volumes=[sky.Volume(size_gb=-5, mount_path="/data")],
        )
    assert caught.value.field == "volume.size_gb"
    assert aws_env.moto.calls == []


def test_missing_credentials_name_the_fix_before_anything_is_created(
    aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    pool = sky.ComputePool(provider=sky.AWS(ssh_cidr="127.0.0.1/32"), display="quiet")  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID") as caught:
        pool.open()
    assert "aws configure" in str(caught.value)
    assert aws_env.moto.write_actions() == []


def test_client_address_is_learned_for_the_security_group(
    aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssh_cidr: port 22 opens to the address AWS's checkip service reports, only."""
    import http.server
    import threading

    asked: list[str] = []

    class CheckIp(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b"198.51.100.23\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CheckIp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SKYWARD_AWS_CHECKIP_URL", f"http://127.0.0.1:{server.server_port}/")
        provider = _provider(ssh_cidr=None)
        infra = provider.prepare(build_spec(cpu=2), "sky-checkip")
        provider.teardown(infra)
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/"]
    ec2 = boto3.client("ec2", region_name="us-east-1")
    (group,) = ec2.describe_security_groups(GroupIds=[infra.security_group_id])["SecurityGroups"]
    ssh = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for p in ssh for r in p["IpRanges"]] == ["198.51.100.23/32"]


def test_an_unlearnable_client_address_names_the_fix(
    aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("SKYWARD_AWS_CHECKIP_URL", f"http://127.0.0.1:{port}/")
    provider = _provider(ssh_cidr=None)
    with pytest.raises(ProvisioningError, match="ssh_cidr") as caught:
        provider.prepare(build_spec(cpu=2), "sky-no-ip")
    assert "0.0.0.0/0" in str(caught.value)
    assert aws_env.moto.write_actions() == [], "nothing created before the address is known"


# -- catalog, prices, images --------------------------------------------------------------


def test_offers_come_from_the_live_catalog_with_prices(aws_env: AwsEnv) -> None:
    provider = _provider()
    offers = provider.offers(build_spec(accelerator="T4"))
    assert offers
    assert all(o.accelerator == "T4" for o in offers)
    best = sky.selection.rank_offers(offers, build_spec(accelerator="T4", allocation="on-demand"))[
        0
    ]
    assert best.instance_type == "g4dn.xlarge"
    assert best.price_on_demand == pytest.approx(
        aws_env.pricing.prices[("us-east-1", "g4dn.xlarge")]
    )
    assert best.price_spot is not None
    assert aws_env.pricing.count("GetProducts") >= 1
    before = aws_env.pricing.count()
    provider.offers(build_spec(accelerator="T4"))
    assert aws_env.pricing.count() == before, "on-demand prices are cached"


@pytest.mark.parametrize(
    ("accelerator", "expected_family"),
    [
        ("A100-40GB", "p4d"),
        ("A100-80GB", "p4de"),
        ("A10G", "g5"),
        ("H100", "p5"),
        # A MIG profile names the GPU and its memory variant: 1g.5gb exists on 40GB only.
        (sky.AcceleratorSpec.NVIDIA.A100(mig="1g.5gb"), "p4d"),
        (sky.AcceleratorSpec.NVIDIA.A100(mig="3g.40gb"), "p4de"),
        (sky.AcceleratorSpec.NVIDIA.H100(mig="3g.40gb"), "p5"),
    ],
)
def test_accelerator_memory_variants_pick_the_right_family(
    aws_env: AwsEnv, accelerator: Any, expected_family: str
) -> None:
    offers = _provider().offers(build_spec(accelerator=accelerator))
    assert offers
    assert {o.instance_type.split(".")[0] for o in offers} == {expected_family}


def test_trainium_comes_from_the_aws_plugin_catalog(aws_env: AwsEnv) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.AWS.Trainium(version=1))
    offers = _provider().offers(spec)
    assert offers
    assert all(o.instance_type.startswith("trn1") for o in offers)


def test_cpu_only_pools_get_no_gpu(aws_env: AwsEnv) -> None:
    offers = _provider().offers(build_spec(cpu=4, memory="8GB"))
    assert offers
    assert all(o.accelerator is None for o in offers)
    assert all(o.vcpus >= 4 and o.memory_gb >= 8 for o in offers)


# -- launching ----------------------------------------------------------------------------


def test_launch_uses_one_fleet_call_and_tags_everything(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=3, cpu=2, allocation="on-demand")
    infra, instances = _launch(provider, spec, "sky-tags")
    try:
        assert len(instances) == 3
        assert aws_env.moto.count("ec2", "CreateFleet") == 1
        assert aws_env.moto.count("ec2", "DeleteLaunchTemplate") == 1
        ec2 = boto3.client("ec2", region_name="us-east-1")
        described = ec2.describe_instances(InstanceIds=[i.id for i in instances])
        for reservation in described["Reservations"]:
            for item in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in item["Tags"]}
                assert tags["skyward:pool"] == "sky-tags"
                assert tags["skyward:managed"] == "true"
                assert item["KeyName"] == "skyward-sky-tags"
        assert ec2.describe_launch_templates()["LaunchTemplates"] == []
        groups = ec2.describe_security_groups(GroupNames=["skyward-sg"])["SecurityGroups"]
        ssh = [p for p in groups[0]["IpPermissions"] if p.get("FromPort") == 22]
        assert ssh[0]["IpRanges"][0]["CidrIp"] == "127.0.0.1/32"
    finally:
        provider.terminate(instances)
        provider.teardown(infra)
    assert _running("sky-tags") == []
    keys = boto3.client("ec2", region_name="us-east-1").describe_key_pairs()["KeyPairs"]
    assert not [k for k in keys if k["KeyName"] == "skyward-sky-tags"]


def test_spot_capacity_error_falls_back_to_on_demand(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=2, cpu=2)  # spot-if-available
    with aws_env.moto.make_capacity_unavailable(lifecycle="spot"):
        infra, instances = _launch(provider, spec, "sky-fallback")
    try:
        assert [i.spot for i in instances] == [False, False]
        assert aws_env.moto.count("ec2", "CreateFleet") == 2
    finally:
        provider.terminate(instances)
        provider.teardown(infra)


def test_always_spot_without_capacity_fails_clearly_and_leaves_nothing(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=2, cpu=2, allocation="always-spot")
    with aws_env.moto.make_capacity_unavailable(lifecycle="spot"), pytest.raises(CapacityError):
        _launch(provider, spec, "sky-spot-only")
    assert _running("sky-spot-only") == []


def test_partial_fleet_is_terminated_not_left_half_built(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=3, cpu=2, allocation="on-demand")
    with (
        aws_env.moto.make_capacity_unavailable(lifecycle=None, available=1),
        pytest.raises(CapacityError, match="only 1 of 3"),
    ):
        _launch(provider, spec, "sky-partial")
    assert _running("sky-partial") == []


def test_throttled_calls_are_retried(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=1, cpu=2, allocation="on-demand")
    aws_env.moto.throttle_next("ec2", "CreateFleet", times=2)
    infra, instances = _launch(provider, spec, "sky-throttle")
    try:
        assert len(instances) == 1
        assert aws_env.moto.count("ec2", "CreateFleet") == 3
    finally:
        provider.terminate(instances)
        provider.teardown(infra)


@pytest.mark.parametrize("nodes", [1, 10, 50])
def test_launch_cost_is_constant_in_api_calls(aws_env: AwsEnv, nodes: int) -> None:
    provider = _provider()
    spec = build_spec(nodes=nodes, cpu=2, allocation="on-demand")
    provider.offers(spec)  # catalog and prices: cached, not part of the launch
    aws_env.moto.reset_calls()
    infra, instances = _launch(provider, spec, f"sky-scale{nodes}")
    launch_calls = len(aws_env.moto.calls)
    provider.terminate(instances)
    provider.teardown(infra)
    assert len(instances) == nodes
    # the same handful of calls whether 1 or 50 nodes: O(1) in N
    assert launch_calls <= 16, [c.action for c in aws_env.moto.calls]
    _LAUNCH_CALLS[nodes] = launch_calls
    if len(_LAUNCH_CALLS) == 3:
        assert len(set(_LAUNCH_CALLS.values())) == 1, _LAUNCH_CALLS


_LAUNCH_CALLS: dict[int, int] = {}


def test_s3_volumes_create_the_role_profile_and_bucket_once(aws_env: AwsEnv) -> None:
    provider = _provider()
    volume = sky.S3Volume(mount_path="/data", bucket="my-datasets", prefix="train/")
    spec = build_spec(cpu=2, volumes=[volume], allocation="on-demand")
    infra = provider.prepare(spec, "sky-s3")
    try:
        assert infra.instance_profile_arn.endswith("instance-profile/skyward-instance-profile")
        iam = boto3.client("iam", region_name="us-east-1")
        assert iam.get_role(RoleName="skyward-role")["Role"]["RoleName"] == "skyward-role"
        buckets = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
        assert any(b.startswith("skyward-") and b.endswith("-us-east-1") for b in buckets)
    finally:
        provider.teardown(infra)
    again = provider.prepare(spec, "sky-s3-again")
    provider.teardown(again)
    assert aws_env.moto.count("iam", "CreateRole") == 1


def test_bucket_access_only_grows_across_pools(aws_env: AwsEnv) -> None:
    """A second pool's buckets are added to the shared role, never swapped in: the first
    pool may still be running on that role."""
    import json

    provider = _provider()
    for pool, bucket in (("sky-b1", "first-bucket"), ("sky-b2", "second-bucket")):
        spec = build_spec(cpu=2, volumes=[sky.S3Volume(mount_path="/data", bucket=bucket)])
        provider.teardown(provider.prepare(spec, pool))
    iam = boto3.client("iam", region_name="us-east-1")
    document = iam.get_role_policy(RoleName="skyward-role", PolicyName="skyward-s3-volumes")[
        "PolicyDocument"
    ]
    if isinstance(document, str):
        document = json.loads(document)
    (statement,) = document["Statement"]
    assert statement["Resource"] == [
        "arn:aws:s3:::first-bucket",
        "arn:aws:s3:::first-bucket/*",
        "arn:aws:s3:::second-bucket",
        "arn:aws:s3:::second-bucket/*",
    ]


def test_a_new_instance_profile_is_waited_for_not_failed_on(aws_env: AwsEnv) -> None:
    """EC2 refuses a just-made profile for a few seconds (IAM's eventual consistency);
    the launch waits it out instead of failing the user's first S3 or SSM pool."""
    import contextlib
    import threading

    provider = _provider()
    volume = sky.S3Volume(mount_path="/data", bucket="my-datasets")
    spec = build_spec(cpu=2, volumes=[volume], allocation="on-demand")
    not_yet = contextlib.ExitStack()
    not_yet.enter_context(
        aws_env.moto.make_capacity_unavailable(
            lifecycle=None,
            error_code="InvalidParameterValue",
            message="Value (skyward-instance-profile) for parameter iamInstanceProfile.name "
            "is invalid. Invalid IAM Instance Profile name",
        )
    )
    threading.Timer(2.0, not_yet.close).start()  # the profile becomes visible
    try:
        infra, instances = _launch(provider, spec, "sky-new-profile")
    finally:
        not_yet.close()
    provider.terminate(instances)
    provider.teardown(infra)
    assert len(instances) == 1
    assert aws_env.moto.count("ec2", "CreateFleet") >= 2


def test_user_supplied_security_group_is_used_as_given(aws_env: AwsEnv) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName="mine", Description="mine", VpcId=vpc)["GroupId"]
    aws_env.moto.reset_calls()
    provider = _provider(security_group_id=group)
    spec = build_spec(cpu=2, allocation="on-demand")
    infra, instances = _launch(provider, spec, "sky-own-sg")
    provider.terminate(instances)
    provider.teardown(infra)
    assert infra.security_group_id == group
    assert aws_env.moto.count("ec2", "CreateSecurityGroup") == 0
    assert aws_env.moto.count("ec2", "AuthorizeSecurityGroupIngress") == 0


def test_instance_catalog_is_paginated_and_cached_on_disk_with_expiry(aws_env: AwsEnv) -> None:
    import json

    from skyward_aws.catalog import load_instance_types
    from skyward_aws.session import cache_dir

    path = cache_dir() / "instance-types-us-east-1.json"
    path.unlink()
    ec2 = boto3.client("ec2", region_name="us-east-1")
    aws_env.moto.reset_calls()
    first = load_instance_types(ec2, "us-east-1", cache_dir())
    pages = aws_env.moto.count("ec2", "DescribeInstanceTypes")
    # The fake pages like EC2 (at most 100 types a page); botocore follows NextToken.
    assert pages > 1
    assert len(first) > 1000
    assert load_instance_types(ec2, "us-east-1", cache_dir()) == first
    assert aws_env.moto.count("ec2", "DescribeInstanceTypes") == pages, "served from disk"
    stored = json.loads(path.read_text())
    stored["fetched"] -= 2 * 24 * 3600
    path.write_text(json.dumps(stored))
    load_instance_types(ec2, "us-east-1", cache_dir())
    assert aws_env.moto.count("ec2", "DescribeInstanceTypes") == 2 * pages, "expired: read again"


def test_types_not_offered_in_the_region_are_excluded(aws_env: AwsEnv) -> None:
    offers = _provider(region="us-west-2").offers(build_spec(cpu=2))
    ec2 = boto3.client("ec2", region_name="us-west-2")
    offered = {
        o["InstanceType"]
        for page in ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone"
        )
        for o in page["InstanceTypeOfferings"]
    }
    assert offers
    assert {o.instance_type for o in offers} <= offered
    assert all(o.region == "us-west-2" for o in offers)


@pytest.mark.parametrize(
    ("machine", "parameter"),
    [
        ("m5.large", UBUNTU_2204_AMD64),
        ("m6g.large", UBUNTU_2204_ARM64),
        ("g4dn.xlarge", DLAMI_X86_64),
    ],
)
def test_ami_follows_the_type(aws_env: AwsEnv, machine: str, parameter: str) -> None:
    provider = _provider()
    spec = build_spec(machine=machine, allocation="on-demand")
    infra, instances = _launch(provider, spec, f"sky-ami-{machine.replace('.', '')}")
    try:
        ec2 = boto3.client("ec2", region_name="us-east-1")
        image = ec2.describe_instances(InstanceIds=[instances[0].id])["Reservations"][0][
            "Instances"
        ][0]["ImageId"]
        assert image == aws_env.ami(parameter)
    finally:
        provider.terminate(instances)
        provider.teardown(infra)


def test_custom_ami_wins_and_username_follows_it(aws_env: AwsEnv) -> None:
    from skyward_aws.amis import resolve_ami, username_for

    ec2 = boto3.client("ec2", region_name="us-east-1")
    custom = ec2.describe_images(Owners=["amazon"])["Images"][0]
    ami, user = resolve_ami(
        boto3.client("ssm", region_name="us-east-1"), ec2, custom["ImageId"], "x86_64", gpu=True
    )
    assert ami == custom["ImageId"]
    assert user == username_for(custom.get("Name", ""))
    assert username_for("al2023-ami-2023.5.20240916.0-kernel-6.1-x86_64") == "ec2-user"
    assert username_for("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server") == "ubuntu"
    assert username_for("debian-12-amd64-20240717-1811") == "admin"


def test_launch_template_requires_imdsv2_and_terminates_on_shutdown(aws_env: AwsEnv) -> None:
    from skyward_aws.provider import launch_template_data

    provider = _provider()
    spec = build_spec(cpu=2, volumes=[sky.Volume(size_gb=100, mount_path="/data")])
    infra = provider.prepare(spec, "sky-template")
    try:
        data = launch_template_data(infra, spec, "ami-12345678", "ubuntu", {"skyward:pool": "p"})
    finally:
        provider.teardown(infra)
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["KeyName"] == "skyward-sky-template"
    ebs = data["BlockDeviceMappings"][0]["Ebs"]
    assert ebs == {"VolumeSize": 100, "VolumeType": "gp3", "DeleteOnTermination": True}
    import base64

    user_data = base64.b64decode(data["UserData"]).decode()
    assert infra.identity.host.private_openssh.splitlines()[1] in user_data
    assert "AWS_SECRET" not in user_data
    assert {t["ResourceType"] for t in data["TagSpecifications"]} == {"instance", "volume"}


def test_launch_sends_imdsv2_and_terminate_on_shutdown_over_the_wire(aws_env: AwsEnv) -> None:
    """moto stores but does not enforce MetadataOptions: check what boto3 really sent."""
    provider = _provider()
    aws_env.moto.reset_calls()
    infra, instances = _launch(provider, build_spec(cpu=2, allocation="on-demand"), "sky-wire")
    provider.terminate(instances)
    provider.teardown(infra)
    (create,) = [c for c in aws_env.moto.calls if c.action == "CreateLaunchTemplate"]
    sent = create.params
    assert sent["LaunchTemplateData.MetadataOptions.HttpTokens"] == "required"
    assert sent["LaunchTemplateData.MetadataOptions.HttpEndpoint"] == "enabled"
    assert sent["LaunchTemplateData.InstanceInitiatedShutdownBehavior"] == "terminate"
    (fleet,) = [c for c in aws_env.moto.calls if c.action == "CreateFleet"]
    assert fleet.params["Type"] == "instant"
    template = create.params.get("LaunchTemplateName")
    assert fleet.params["LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId"]
    assert template == "skyward-sky-wire"
    assert [c.action for c in aws_env.moto.calls].count("DeleteLaunchTemplate") == 1


def test_teardown_deletes_volumes_left_with_the_pool_tag(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(cpu=2)
    infra = provider.prepare(spec, "sky-vol")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=10,
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "skyward:pool", "Value": "sky-vol"}]}
        ],
    )
    provider.teardown(infra)
    left = ec2.describe_volumes(Filters=[{"Name": "tag:skyward:pool", "Values": ["sky-vol"]}])
    assert left["Volumes"] == []


def test_volume_bootstrap_steps_are_valid_shell() -> None:
    from skyward_aws.volumes import volume_steps

    spec = build_spec(
        volumes=[
            sky.Volume(size_gb=50, mount_path="/scratch"),
            sky.S3Volume(mount_path="/data", bucket="my-bucket", prefix="train/", read_only=True),
        ]
    )
    (step,) = volume_steps(spec)
    assert step.name == "volumes"
    subprocess.run(["sh", "-n"], input=step.script, text=True, check=True)
    assert "mkfs.ext4" in step.script
    assert "$SUDO s3fs my-bucket:/train /data -o iam_role=auto $owner -o ro" in step.script
    script = spec.image.bootstrap(steps=[step])
    assert script.index("_sky_say step volumes") < script.index("_sky_say step deps")
    assert volume_steps(build_spec()) == []


def test_list_by_tag_finds_instances_for_skyward_down(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=2, cpu=2, allocation="on-demand")
    infra, instances = _launch(provider, spec, "sky-orphans")
    try:
        found = provider.list_by_tag("sky-orphans")
        assert {i.id for i in found} == {i.id for i in instances}
        assert {i.id for i in provider.list_by_tag()} >= {i.id for i in instances}
    finally:
        provider.terminate(instances)
        provider.teardown(infra)
    assert provider.list_by_tag("sky-orphans") == []


def test_spot_shortfall_is_topped_up_with_on_demand(aws_env: AwsEnv) -> None:
    provider = _provider()
    spec = build_spec(nodes=3, cpu=2)
    with aws_env.moto.make_capacity_unavailable(lifecycle="spot", available=1):
        infra, instances = _launch(provider, spec, "sky-topup")
    try:
        assert sorted(i.spot for i in instances) == [False, False, True]
    finally:
        provider.terminate(instances)
        provider.teardown(infra)


@pytest.mark.parametrize(
    ("allocation", "prices", "expected"),
    [
        ("on-demand", (1.0, 0.3), (0, 4, False)),
        ("always-spot", (1.0, 0.3), (4, 0, False)),
        ("spot", (1.0, 0.3), (4, 0, False)),
        ("spot-if-available", (1.0, 0.3), (4, 0, True)),
        ("cheapest", (1.0, 0.3), (4, 0, True)),
        ("cheapest", (0.2, 0.3), (0, 4, False)),
        (0.5, (1.0, 0.3), (2, 2, False)),
        (sky.Allocation.Percent(spot=0.8), (1.0, 0.3), (4, 0, False)),
    ],
)
def test_allocation_split(allocation: Any, prices: tuple[float, float], expected: Any) -> None:
    from skyward.allocation import parse_allocation
    from skyward_aws.fleet import split

    offer = sky.Offer(
        provider="aws", instance_type="m5.large", vcpus=2, memory_gb=8,
        price_on_demand=prices[0], price_spot=prices[1],
    )  # fmt: skip
    assert split(parse_allocation(allocation), 4, offer) == expected


def test_always_spot_on_a_type_without_spot_is_a_capacity_error() -> None:
    from skyward.allocation import parse_allocation
    from skyward_aws.fleet import split

    offer = sky.Offer(provider="aws", instance_type="x", vcpus=1, memory_gb=1, price_on_demand=1)
    with pytest.raises(CapacityError, match="not sold as spot"):
        split(parse_allocation("always-spot"), 2, offer)


def test_fractional_gpu_shares_match_g6f(aws_env: AwsEnv) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.NVIDIA.L4(count=0.125))
    offers = _provider().offers(spec)
    assert offers
    smallest = min(offers, key=lambda o: o.accelerator_count)
    assert smallest.instance_type == "g6f.large"
    assert smallest.accelerator_count == pytest.approx(0.125)
    whole = _provider().offers(build_spec(accelerator="L4"))
    assert all(o.accelerator_count >= 1 for o in whole), "a whole L4 never lands on a share"


def test_trainium2_types_come_from_neuron_info(aws_env: AwsEnv) -> None:
    spec = build_spec(accelerator=sky.AcceleratorSpec.AWS.Trainium(version=2))
    assert _provider().offers(spec) == [], "no trn2 is sold in us-east-1"
    offers = _provider(region="us-east-2").offers(spec)
    assert [o.instance_type for o in offers] == ["trn2.48xlarge"]
    assert all(o.accelerator == "Trainium2" for o in offers)


def test_shared_infrastructure_is_listed_and_removed_by_skyward_down(aws_env: AwsEnv) -> None:
    from skyward.cli import main

    provider = _provider()
    spec = build_spec(cpu=2, volumes=[sky.S3Volume(mount_path="/data", bucket="my-datasets")])
    provider.teardown(provider.prepare(spec, "sky-shared"))
    kinds = sorted(kind for kind, _ in provider.list_shared())
    assert kinds == ["iam-role", "instance-profile", "s3-bucket", "security-group"]
    assert main(["down", "--provider", "aws", "--shared", "--dry-run"]) == 0
    assert len(provider.list_shared()) == 4, "--dry-run removes nothing"
    assert main(["down", "--provider", "aws", "--shared", "--yes"]) == 0
    assert provider.list_shared() == []


def test_catalog_reads_every_page_of_describe_instance_types(aws_env: AwsEnv) -> None:
    from skyward_aws.catalog import load_instance_types
    from skyward_aws.session import cache_dir

    ec2 = boto3.client("ec2", region_name="us-east-1")
    pages = [ec2.describe_instance_types(MaxResults=100)]
    while "NextToken" in pages[-1]:
        pages.append(ec2.describe_instance_types(MaxResults=100, NextToken=pages[-1]["NextToken"]))
    first = {t["InstanceType"] for t in pages[0]["InstanceTypes"]}
    last = sorted(t["InstanceType"] for t in pages[-1]["InstanceTypes"])
    sold = ec2.describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": last}]
    )["InstanceTypeOfferings"]
    late = min(o["InstanceType"] for o in sold)  # sold here, so it can become an offer
    assert late not in first
    assert len(pages) > 2

    (cache_dir() / "instance-types-us-east-1.json").unlink()
    aws_env.moto.reset_calls()
    types = load_instance_types(ec2, "us-east-1", cache_dir())
    assert aws_env.moto.count("ec2", "DescribeInstanceTypes") == len(pages) > 1
    assert len(types) == sum(len(page["InstanceTypes"]) for page in pages)
    assert late in {t.name for t in types}

    offers = _provider().offers(build_spec(machine=late))
    assert [o.instance_type for o in offers] == [late]
