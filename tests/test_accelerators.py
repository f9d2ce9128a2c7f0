"""Accelerator catalog, specs, factories and instance selection (skyward.accelerators)."""

from __future__ import annotations

import pickle
import typing

import attrs
import pytest

from skyward import accelerators
from skyward.accelerators import (
    BUILTIN_ACCELERATORS,
    MIG_PROFILES,
    NVIDIA,
    Accelerator,
    AcceleratorCatalog,
    AcceleratorDefinition,
    AcceleratorSpec,
    MigProfile,
    default_catalog,
    is_amd,
    is_inferentia,
    is_nvidia,
    is_tpu,
    is_trainium,
    parse_accelerator,
    parse_memory_gb,
    select_instance,
)
from skyward.errors import ConfigurationError, PluginError, PluginNotInstalledError
from skyward.offers import Offer

TRAINIUM1 = AcceleratorDefinition("Trainium1", "AWS", (32,), aliases=("trn1",), family="Trainium")
TRAINIUM2 = AcceleratorDefinition("Trainium2", "AWS", (96,), aliases=("trn2",), family="Trainium")
INFERENTIA2 = AcceleratorDefinition("Inferentia2", "AWS", (32,), family="Inferentia")


@pytest.fixture(autouse=True)
def builtin_live_catalog(monkeypatch: pytest.MonkeyPatch) -> AcceleratorCatalog:
    """Every test sees a live catalog of built-ins only, unless it installs its own."""
    catalog = default_catalog()
    monkeypatch.setattr(accelerators, "_live_catalog", lambda: catalog)
    return catalog


@pytest.fixture
def aws_catalog(monkeypatch: pytest.MonkeyPatch) -> AcceleratorCatalog:
    """A live catalog as it looks with the AWS plugin installed."""
    catalog = default_catalog()
    for definition in (TRAINIUM1, TRAINIUM2, INFERENTIA2):
        catalog.register(definition, plugin="aws")
    monkeypatch.setattr(accelerators, "_live_catalog", lambda: catalog)
    return catalog


def error_text(error: pytest.ExceptionInfo[BaseException]) -> str:
    return str(error.value)


# -- MIG tables ------------------------------------------------------------------------


H100_A100_80GB = [
    ("1g.10gb", 7, 10),
    ("1g.20gb", 4, 20),
    ("2g.20gb", 3, 20),
    ("3g.40gb", 2, 40),
    ("4g.40gb", 1, 40),
    ("7g.80gb", 1, 80),
]
A100_40GB = [("1g.5gb", 7, 5), ("2g.10gb", 3, 10), ("3g.20gb", 2, 20), ("4g.20gb", 1, 20)]


def test_mig_tables_match_the_documented_tables() -> None:
    assert [(p.name, p.workers, p.memory_gb) for p in MIG_PROFILES[80]] == H100_A100_80GB
    assert [(p.name, p.workers, p.memory_gb) for p in MIG_PROFILES[40]] == A100_40GB
    assert set(MIG_PROFILES) == {80, 40}


@pytest.mark.parametrize(("profile", "workers", "memory"), H100_A100_80GB)
@pytest.mark.parametrize("gpu", ["H100", "A100"])
def test_80gb_mig_profiles_give_documented_workers(
    gpu: str, profile: str, workers: int, memory: int
) -> None:
    factory = getattr(AcceleratorSpec.NVIDIA, gpu)
    spec = factory(mig=profile)
    assert spec.mig == profile
    assert spec.mig_workers == workers
    assert spec.memory == "80GB"  # the variant the profile belongs to
    assert str(spec) == f"{gpu}-80GB-MIG-{profile}"


@pytest.mark.parametrize(("profile", "workers", "memory"), A100_40GB)
def test_a100_40gb_mig_profiles_give_documented_workers(
    profile: str, workers: int, memory: int
) -> None:
    explicit = AcceleratorSpec.NVIDIA.A100(memory="40GB", mig=profile)
    inferred = AcceleratorSpec.NVIDIA.A100(mig=profile)
    assert explicit == inferred
    assert explicit.memory_gb == 40
    assert explicit.mig_workers == workers


def test_whole_gpus_run_one_worker() -> None:
    assert AcceleratorSpec.NVIDIA.H100().mig_workers == 1
    assert AcceleratorSpec.NVIDIA.T4(count=4).mig_workers == 1


def test_mig_profile_names_are_case_insensitive() -> None:
    assert AcceleratorSpec.NVIDIA.H100(mig=" 3G.40GB ").mig == "3g.40gb"


def test_mig_profile_of_the_other_memory_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.NVIDIA.A100(memory="40GB", mig="3g.40gb")
    assert error.value.field == "accelerator"
    assert "1g.5gb, 2g.10gb, 3g.20gb, 4g.20gb" in error_text(error)


def test_unknown_mig_profile_lists_every_table() -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.NVIDIA.A100(mig="5g.50gb")
    text = error_text(error)
    assert "'5g.50gb'" in text
    assert "80GB: 1g.10gb" in text
    assert "40GB: 1g.5gb" in text


def test_mig_on_a_gpu_without_mig_names_the_capable_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        default_catalog().spec("T4", mig="1g.5gb")
    assert "T4 does not support MIG" in error_text(error)
    assert "MIG works on: A100, H100" in error_text(error)


def test_mig_on_h100_40gb_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="H100 40GB does not support MIG"):
        AcceleratorSpec.NVIDIA.H100(memory="40GB", mig="1g.5gb")


@pytest.mark.parametrize("bad", ["3g40gb", "3g.40", "big", ""])
def test_malformed_mig_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="MIG profile"):
        AcceleratorSpec.NVIDIA.H100(mig=bad)


# -- NVIDIA factories ------------------------------------------------------------------


NVIDIA_FACTORIES = [
    ("H100", 80),
    ("H200", 141),
    ("A100", 80),
    ("B100", 192),
    ("B200", 192),
    ("GB200", 384),
    ("GH200", 96),
    ("L4", 24),
    ("L40", 48),
    ("L40S", 48),
    ("T4", 16),
    ("A10", 24),
    ("A10G", 24),
    ("V100", 16),
]


@pytest.mark.parametrize(("name", "default_memory"), NVIDIA_FACTORIES)
def test_every_nvidia_factory(name: str, default_memory: int) -> None:
    factory = getattr(AcceleratorSpec.NVIDIA, name)
    one = factory()
    assert one == AcceleratorSpec(name=name, vendor="NVIDIA")
    assert (one.count, one.memory, one.form_factor, one.mig) == (1, None, None, None)
    assert str(one) == name
    four = factory(count=4)
    assert four.count == 4
    assert str(four) == f"4x{name}"
    assert default_catalog().get(name).default_memory_gb == default_memory
    assert is_nvidia(one)


def test_nvidia_namespace_has_exactly_the_documented_factories() -> None:
    public = {n for n in vars(AcceleratorSpec.NVIDIA) if not n.startswith("_")}
    assert public == {name for name, _ in NVIDIA_FACTORIES}


def test_a100_memory_variants() -> None:
    default = AcceleratorSpec.NVIDIA.A100()
    forty = AcceleratorSpec.NVIDIA.A100(memory="40GB")
    eighty = AcceleratorSpec.NVIDIA.A100(memory="80gb")
    assert default.memory is None
    assert default.memory_gb is None  # any A100 will do
    assert (forty.memory, forty.memory_gb, str(forty)) == ("40GB", 40, "A100-40GB")
    assert (eighty.memory, eighty.memory_gb, str(eighty)) == ("80GB", 80, "A100-80GB")
    assert AcceleratorSpec.NVIDIA.A100(memory=40) == forty
    assert AcceleratorSpec.NVIDIA.A100(memory="40 GiB") == forty
    assert forty != eighty


def test_v100_memory_variants() -> None:
    assert AcceleratorSpec.NVIDIA.V100(memory="32GB").memory_gb == 32
    assert default_catalog().get("V100").memory_gb == (16, 32)
    with pytest.raises(ConfigurationError, match="Valid memory for V100: 16GB, 32GB"):
        AcceleratorSpec.NVIDIA.V100(memory="40GB")


def test_bad_memory_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.NVIDIA.A100(memory="50GB")
    assert error.value.field == "accelerator"
    assert "A100 has no 50GB variant" in error_text(error)
    assert "80GB, 40GB" in error_text(error)


@pytest.mark.parametrize("bad", ["lots", "40.5GB", "-40GB", 0])
def test_unreadable_gpu_memory_is_refused(bad: str | int) -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.NVIDIA.A100(memory=bad)
    assert error.value.field == "accelerator"


@pytest.mark.parametrize(
    ("given", "canonical"), [("SXM", "SXM"), ("pcie", "PCIe"), ("NVL", "NVL"), ("nvl", "NVL")]
)
def test_h100_form_factors(given: str, canonical: str) -> None:
    spec = AcceleratorSpec.NVIDIA.H100(form_factor=given)
    assert spec.form_factor == canonical
    assert str(spec) == f"H100-{canonical}"


def test_unknown_form_factor_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match="SXM, PCIe, NVL"):
        AcceleratorSpec.NVIDIA.H100(form_factor="HGX")


def test_form_factor_on_a_gpu_without_variants_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="T4 has no form factor variants"):
        default_catalog().spec("T4", form_factor="SXM")


def test_combined_h100_options() -> None:
    spec = AcceleratorSpec.NVIDIA.H100(count=8, form_factor="SXM", mig="1g.10gb")
    assert str(spec) == "8xH100-80GB-SXM-MIG-1g.10gb"
    assert spec.mig_workers == 7
    assert default_catalog().parse(str(spec)) == spec


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "2"])
def test_bad_counts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.NVIDIA.H100(count=bad)  # type: ignore[arg-type]
    assert error.value.field == "accelerator"
    assert isinstance(error.value, ValueError)


def test_fractional_counts_are_allowed_for_shared_gpus() -> None:
    spec = AcceleratorSpec.NVIDIA.A10G(count=0.25)
    assert spec.count == 0.25
    assert str(spec) == "0.25xA10G"
    assert default_catalog().parse("0.25xA10G") == spec


# -- AMD and Google factories -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name", "memory"),
    [
        ("300X", "MI300X", 192),
        ("250x", "MI250X", 128),
        ("210", "MI210", 64),
        ("MI100", "MI100", 32),
    ],
)
def test_amd_factory(model: str, name: str, memory: int) -> None:
    spec = AcceleratorSpec.AMD.MI(model, count=2)
    assert (spec.name, spec.vendor, spec.count) == (name, "AMD", 2)
    assert default_catalog().get(name).memory_gb == (memory,)
    assert is_amd(spec)
    assert not is_nvidia(spec)


def test_unknown_amd_model_suggests_and_lists() -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.AMD.MI("300")
    assert "Did you mean '300X'?" in error_text(error)
    assert "300X, 250X, 210, 100" in error_text(error)


@pytest.mark.parametrize(
    ("version", "name"),
    [("v4", "TPU-v4"), ("v5e", "TPU-v5e"), ("v5p", "TPU-v5p"), ("V6E", "TPU-v6e")],
)
def test_tpu_factory(version: str, name: str) -> None:
    spec = AcceleratorSpec.Google.TPU(version=version, count=4)
    assert (spec.name, spec.vendor, spec.count) == (name, "Google", 4)
    assert str(spec) == f"4x{name}"
    assert is_tpu(spec)


def test_tpu_factory_accepts_google_spellings() -> None:
    assert AcceleratorSpec.Google.TPU("v5litepod").name == "TPU-v5e"
    assert AcceleratorSpec.Google.TPU("TPU-v5p").name == "TPU-v5p"
    assert AcceleratorSpec.Google.TPU("trillium").name == "TPU-v6e"


def test_unknown_tpu_version_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.Google.TPU(version="v9x")
    assert "v4, v5e, v5p, v6e" in error_text(error)


@pytest.mark.parametrize(
    ("slice_name", "name", "chips"),
    [
        ("v5p-8", "TPU-v5p", 4),  # v5p slices count TensorCores, two per chip
        ("v4-32", "TPU-v4", 16),
        ("v5litepod-8", "TPU-v5e", 8),  # v5e and v6e slices count chips
        ("v6e-16", "TPU-v6e", 16),
        ("TPU-v5e-4", "TPU-v5e", 4),
    ],
)
def test_tpu_slice_reads_the_chip_count_from_the_suffix(
    slice_name: str, name: str, chips: int
) -> None:
    spec = AcceleratorSpec.Google.TPUSlice(slice_name)
    assert (spec.name, spec.count) == (name, chips)
    assert default_catalog().parse(slice_name) == spec


@pytest.mark.parametrize("bad", ["v5p", "v5p-3", "v5p-0", "v9-8", "8"])
def test_bad_tpu_slices_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        AcceleratorSpec.Google.TPUSlice(bad)


# -- Parsing strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("H100", AcceleratorSpec("H100")),
        ("h100", AcceleratorSpec("H100")),
        ("8xH100", AcceleratorSpec("H100", count=8)),
        ("8 x h100", AcceleratorSpec("H100", count=8)),
        ("H100:8", AcceleratorSpec("H100", count=8)),
        ("A100-40GB", AcceleratorSpec("A100", memory="40GB")),
        ("a100_40gb", AcceleratorSpec("A100", memory="40GB")),
        ("A100 80GB", AcceleratorSpec("A100", memory="80GB")),
        ("H100-SXM", AcceleratorSpec("H100", form_factor="SXM")),
        ("H100-pcie", AcceleratorSpec("H100", form_factor="PCIe")),
        ("H100-NVL", AcceleratorSpec("H100", form_factor="NVL")),
        ("H100-3g.40gb", AcceleratorSpec("H100", memory="80GB", mig="3g.40gb")),
        ("A100-40GB-MIG-3g.20gb", AcceleratorSpec("A100", memory="40GB", mig="3g.20gb")),
        ("2xA100-MIG-1g.5gb", AcceleratorSpec("A100", count=2, memory="40GB", mig="1g.5gb")),
        ("NVIDIA-H100", AcceleratorSpec("H100")),
        ("Tesla-T4", AcceleratorSpec("T4")),
        ("MI300X", AcceleratorSpec("MI300X", vendor="AMD")),
        ("AMD-mi300x:2", AcceleratorSpec("MI300X", count=2)),
        ("TPU-v5p", AcceleratorSpec("TPU-v5p")),
        ("v6e-8", AcceleratorSpec("TPU-v6e", count=8)),
    ],
)
def test_parse(text: str, expected: AcceleratorSpec) -> None:
    spec = default_catalog().parse(text)
    assert spec == expected
    assert default_catalog().parse(str(spec)) == spec  # the canonical string reads back


def test_parse_fills_in_the_vendor() -> None:
    catalog = default_catalog()
    assert catalog.parse("H100").vendor == "NVIDIA"
    assert catalog.parse("MI300X").vendor == "AMD"
    assert catalog.parse("v5p-8").vendor == "Google"


@pytest.mark.parametrize("value", typing.get_args(NVIDIA))
def test_every_nvidia_literal_value_parses(value: str) -> None:
    spec = default_catalog().parse(value)
    assert spec.vendor == "NVIDIA"
    assert value.lower().startswith(spec.name.lower())
    assert is_nvidia(value)


def test_nvidia_literal_covers_every_builtin_nvidia_gpu() -> None:
    values = set(typing.get_args(NVIDIA))
    nvidia = {d.name for d in BUILTIN_ACCELERATORS if d.vendor == "NVIDIA"}
    assert nvidia <= values


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigurationError) as error:
        default_catalog().parse("H10")
    assert error.value.field == "accelerator"
    assert "unknown accelerator 'H10'" in error_text(error)
    assert "Did you mean 'H100'?" in error_text(error)
    assert "Known: A10, A100" in error_text(error)


def test_unknown_name_with_qualifiers_suggests_from_the_name() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'A100'"):
        default_catalog().parse("A1000-40GB")


def test_suggestion_is_the_canonical_name_not_an_alias() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'T4'"):
        default_catalog().get("Tesla-T5")


def test_unknown_name_without_a_close_match_lists_the_known() -> None:
    with pytest.raises(ConfigurationError) as error:
        default_catalog().parse("quantum-annealer")
    assert "Did you mean" not in error_text(error)
    assert "Known:" in error_text(error)


def test_bad_memory_variant_in_a_string_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        default_catalog().parse("A100-50GB")
    assert "A100 has no 50GB variant" in error_text(error)
    assert "Valid memory for A100: 80GB, 40GB" in error_text(error)


def test_bad_mig_profile_in_a_string_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"1g\.5gb, 2g\.10gb, 3g\.20gb, 4g\.20gb"):
        default_catalog().parse("A100-40GB-7g.80gb")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("H100-HBM3", "'HBM3' is not a variant of H100"),
        ("T4-SXM", "'SXM' is not a variant of T4"),
        ("8xH100:8", "count twice"),
        ("A100-40GB-80GB", "memory twice"),
        ("A100-MIG", "names no profile"),
        ("A100-MIG-SXM", "names no profile"),
        ("2xv5p-8", "both a count and a TPU slice size"),
        ("0xH100", "count must be a positive number"),
        ("   ", "expected an accelerator name"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        default_catalog().parse(text)


def test_parse_accelerator_passes_specs_through_and_parses_strings() -> None:
    spec = AcceleratorSpec.NVIDIA.T4()
    assert parse_accelerator(spec) is spec
    assert parse_accelerator("4xT4") == AcceleratorSpec.NVIDIA.T4(count=4)
    with pytest.raises(ConfigurationError):
        parse_accelerator(42)  # type: ignore[arg-type]


def test_parse_accelerator_uses_the_live_catalog_for_plugin_names(
    aws_catalog: AcceleratorCatalog,
) -> None:
    assert parse_accelerator("16xTrainium2") == AcceleratorSpec("Trainium2", count=16, vendor="AWS")
    assert parse_accelerator("trn1").name == "Trainium1"


def test_parse_accelerator_does_not_load_plugins_for_builtin_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_plugins() -> AcceleratorCatalog:
        raise AssertionError("built-in names must not load plugins")

    monkeypatch.setattr(accelerators, "_live_catalog", no_plugins)
    assert parse_accelerator("A100-40GB").memory_gb == 40
    assert AcceleratorSpec.AMD.MI("300X").name == "MI300X"
    assert AcceleratorSpec.Google.TPUSlice("v5p-8").count == 4
    assert is_nvidia("H100")


# -- The catalog ------------------------------------------------------------------------


def test_builtin_catalog_contents() -> None:
    catalog = AcceleratorCatalog.with_builtins()
    assert len(catalog) == len(BUILTIN_ACCELERATORS)
    for expected in ("H100", "A100", "MI300X", "TPU-v5p", "A10G", "GB200"):
        assert expected in catalog
    assert "Trainium2" not in catalog  # comes from the AWS plugin
    assert list(catalog.names()) == sorted(catalog.names(), key=str.lower)
    assert [d.name for d in catalog.by_vendor("amd")] == ["MI300X", "MI250X", "MI210", "MI100"]
    assert catalog.owner("H100") == "skyward"


def test_get_is_case_insensitive_and_knows_aliases() -> None:
    catalog = default_catalog()
    assert catalog.get("h100") is catalog.get("H100")
    assert catalog.get("tesla t4").name == "T4"
    assert catalog.get("v5litepod").name == "TPU-v5e"
    assert catalog.find("nope") is None


def test_default_catalog_is_fresh_each_time() -> None:
    first = default_catalog()
    first.register(TRAINIUM2, plugin="aws")
    assert "Trainium2" in first
    assert "Trainium2" not in default_catalog()


def test_registering_the_same_definition_twice_is_harmless() -> None:
    catalog = default_catalog()
    catalog.register(TRAINIUM2, plugin="aws")
    catalog.register(TRAINIUM2, plugin="aws")
    catalog.register(BUILTIN_ACCELERATORS[0], plugin="someone")
    assert len(catalog) == len(BUILTIN_ACCELERATORS) + 1
    assert catalog.owner("Trainium2") == "aws"


def test_a_different_definition_under_a_taken_name_blames_the_plugin() -> None:
    catalog = default_catalog()
    impostor = AcceleratorDefinition("H100", "NVIDIA", (94,))
    with pytest.raises(PluginError) as error:
        catalog.register(impostor, plugin="shady")
    assert error.value.plugin == "shady"
    assert "'skyward'" in error_text(error)
    assert catalog.get("H100").memory_gb == (80, 40)


def test_an_alias_clash_is_a_plugin_error() -> None:
    catalog = default_catalog()
    clash = AcceleratorDefinition("FastChip", "Acme", (8,), aliases=("h100",))
    with pytest.raises(PluginError, match="'h100'"):
        catalog.register(clash, plugin="acme")
    assert "FastChip" not in catalog


def test_registering_something_else_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="AcceleratorDefinition"):
        default_catalog().register("H100", plugin="confused")  # type: ignore[arg-type]


def test_plugin_definitions_parse_and_validate_like_builtins() -> None:
    catalog = default_catalog()
    catalog.register(
        AcceleratorDefinition(
            "RTX6000-Ada", "NVIDIA", (48,), form_factors=("Workstation",), family="Ada Lovelace"
        ),
        plugin="verda",
    )
    spec = catalog.parse("2xRTX6000-Ada-workstation")
    assert (spec.name, spec.count, spec.form_factor, spec.vendor) == (
        "RTX6000-Ada",
        2,
        "Workstation",
        "NVIDIA",
    )
    with pytest.raises(ConfigurationError, match="Valid memory for RTX6000-Ada: 48GB"):
        catalog.parse("RTX6000-Ada-24GB")


def test_definition_validation() -> None:
    with pytest.raises(ConfigurationError, match="not one of its memory variants"):
        AcceleratorDefinition("X1", "Acme", (16,), mig_profiles={80: MIG_PROFILES[80]})
    with pytest.raises(ConfigurationError, match="spaces"):
        AcceleratorDefinition("Big Chip", "Acme")
    with pytest.raises(ConfigurationError, match="positive whole number"):
        AcceleratorDefinition("X1", "Acme", (0,))
    with pytest.raises(ConfigurationError, match="MIG profile name"):
        MigProfile("three", 2, 40)
    single_alias = AcceleratorDefinition("X1", "Acme", aliases="x-one")
    assert single_alias.aliases == ("x-one",)


def test_definitions_and_specs_are_frozen_and_picklable() -> None:
    definition = default_catalog().get("A100")
    spec = AcceleratorSpec.NVIDIA.A100(count=2, memory="40GB", mig="3g.20gb")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.count = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(definition)) == definition
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(pickle.loads(pickle.dumps(spec)))


def test_direct_construction_infers_the_vendor() -> None:
    assert AcceleratorSpec("H100").vendor == "NVIDIA"
    assert AcceleratorSpec("MI300X").vendor == "AMD"
    assert AcceleratorSpec("Trainium2").vendor == "AWS"
    assert AcceleratorSpec("Mystery").vendor == ""
    assert AcceleratorSpec("Mystery", vendor="Acme").vendor == "Acme"


def test_accelerator_is_the_same_class() -> None:
    assert Accelerator is AcceleratorSpec
    assert Accelerator.NVIDIA.H100(count=8) == AcceleratorSpec.NVIDIA.H100(count=8)


# -- AWS accelerators come from the plugin ------------------------------------------------


def test_aws_factories_resolve_from_the_live_catalog(aws_catalog: AcceleratorCatalog) -> None:
    trainium2 = AcceleratorSpec.AWS.Trainium(version=2)
    assert (trainium2.name, trainium2.vendor, trainium2.count) == ("Trainium2", "AWS", 1)
    assert AcceleratorSpec.AWS.Trainium(version=1, count=16) == AcceleratorSpec(
        "Trainium1", count=16, vendor="AWS"
    )
    assert AcceleratorSpec.AWS.Inferentia(version=2).name == "Inferentia2"
    assert is_trainium(trainium2)
    assert is_inferentia(AcceleratorSpec.AWS.Inferentia(version=2))


def test_aws_factories_resolve_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = AcceleratorSpec.AWS.Trainium  # the plugin is not loaded yet
    catalog = default_catalog()
    catalog.register(TRAINIUM2, plugin="aws")
    monkeypatch.setattr(accelerators, "_live_catalog", lambda: catalog)
    assert factory(version=2).name == "Trainium2"


def test_unknown_aws_version_lists_the_registered_ones(aws_catalog: AcceleratorCatalog) -> None:
    with pytest.raises(ConfigurationError) as error:
        AcceleratorSpec.AWS.Trainium(version=7)
    assert "unknown AWS accelerator 'Trainium7'" in error_text(error)
    assert "Trainium1, Trainium2, Inferentia2" in error_text(error)


def test_missing_aws_plugin_names_the_install_command() -> None:
    with pytest.raises(PluginNotInstalledError) as error:
        AcceleratorSpec.AWS.Trainium(version=2)
    assert isinstance(error.value, ImportError)
    assert error.value.name == "Trainium"
    assert 'pip install "skyward[aws]"' in error_text(error)
    assert "AcceleratorSpec.AWS.Trainium" in error_text(error)


def test_aws_namespace_does_not_invent_private_attributes() -> None:
    with pytest.raises(AttributeError):
        _ = AcceleratorSpec.AWS._secret
    assert repr(AcceleratorSpec.AWS) == "AcceleratorSpec.AWS"


# -- is_* helpers -------------------------------------------------------------------------


HELPERS = {
    "nvidia": is_nvidia,
    "amd": is_amd,
    "tpu": is_tpu,
    "trainium": is_trainium,
    "inferentia": is_inferentia,
}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("H100", "nvidia"),
        ("8xA100-40GB", "nvidia"),
        ("V100", "nvidia"),
        ("RTX4090", "nvidia"),
        ("MI300X", "amd"),
        ("MI325X", "amd"),
        ("v5p-8", "tpu"),
        ("TPU-v6e", "tpu"),
        ("tpu-v7", "tpu"),
        ("Trainium", "trainium"),
        ("Trainium2", "trainium"),
        ("trn1", "trainium"),
        ("trn1n", "trainium"),
        ("Inferentia2", "inferentia"),
        ("inf2", "inferentia"),
        ("nonsense", None),
        ("", None),
        ("8xH100:8", None),
    ],
)
def test_is_helpers_on_plain_strings(name: str, kind: str | None) -> None:
    answers = {helper: check(name) for helper, check in HELPERS.items()}
    assert answers == {helper: helper == kind for helper in HELPERS}


def test_is_helpers_on_specs() -> None:
    assert is_nvidia(AcceleratorSpec.NVIDIA.H100(mig="1g.10gb"))
    assert is_tpu(AcceleratorSpec.Google.TPUSlice("v5p-8"))
    assert is_amd(AcceleratorSpec.AMD.MI("300X"))
    assert not is_trainium(AcceleratorSpec.NVIDIA.H100())
    assert is_trainium(AcceleratorSpec("Trainium2"))


def test_is_helpers_see_plugin_definitions(aws_catalog: AcceleratorCatalog) -> None:
    aws_catalog.register(AcceleratorDefinition("A6000", "NVIDIA", (48,)), plugin="verda")
    assert is_nvidia("A6000")
    assert is_trainium("trn2")  # an alias the plugin registered
    assert not is_nvidia("trn2")


# -- Memory sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gb"),
    [
        ("128GB", 128),
        ("128gb", 128),
        ("128 GB", 128),
        ("32GiB", 32),
        ("32G", 32),
        ("512MB", 0.5),
        ("1.5TB", 1536),
        ("64", 64),
        (16, 16),
        (0.5, 0.5),
        ("1048576KB", 1),
    ],
)
def test_parse_memory_gb(text: str | float, gb: float) -> None:
    assert parse_memory_gb(text) == pytest.approx(gb)


@pytest.mark.parametrize("bad", ["lots", "GB", "12XB", "0GB", "-4GB", "", 0, -1, True])
def test_parse_memory_gb_errors(bad: str | float) -> None:
    with pytest.raises(ConfigurationError) as error:
        parse_memory_gb(bad)
    assert error.value.field == "memory"
    assert 'Use a size like "32GB"' in error_text(error)


# -- Instance selection -------------------------------------------------------------------


def offer(
    instance_type: str,
    vcpus: int,
    memory_gb: float,
    gpu: tuple[str, float, float] | None = None,
    price: float | None = None,
    *,
    available: bool = True,
) -> Offer:
    """An offer; ``gpu`` is (name, count, memory of one in GB)."""
    name, count, gpu_memory = gpu if gpu is not None else (None, 0, None)
    return Offer(
        provider="test",
        instance_type=instance_type,
        vcpus=vcpus,
        memory_gb=memory_gb,
        accelerator=name,
        accelerator_count=count,
        accelerator_memory_gb=gpu_memory,
        price_on_demand=price,
        available=available,
    )


OFFERS = [
    offer("p4de.24xlarge", 96, 1152, ("A100", 8, 80), 40.0),
    offer("p4d.24xlarge", 96, 1152, ("A100", 8, 40), 32.0),
    offer("a2-highgpu-1g", 12, 85, ("A100", 1, 40), 3.7),
    offer("a2-ultragpu-1g", 12, 170, ("A100", 1, 80), 5.0),
    offer("a2-ultragpu-4g", 48, 680, ("A100", 4, 80), 20.0),
    offer("p5.48xlarge", 192, 2048, ("H100", 8, 80), 98.0),
    offer("g4dn.xlarge", 4, 16, ("T4", 1, 16), 0.5),
    offer("g4dn.2xlarge", 8, 32, ("T4", 1, 16), 0.75),
    offer("g4dn.12xlarge", 48, 192, ("T4", 4, 16), 3.9),
    offer("m7i.large", 2, 8, price=0.1),
    offer("m7i.xlarge", 4, 16, price=0.2),
    offer("c7i.8xlarge", 32, 64, price=1.4),
]


def test_select_smallest_matching_gpu_offer() -> None:
    assert select_instance(OFFERS, accelerator="T4").instance_type == "g4dn.xlarge"  # type: ignore[union-attr]
    chosen = select_instance(OFFERS, accelerator="T4", cpu=6)
    assert chosen is not None
    assert chosen.instance_type == "g4dn.2xlarge"
    chosen = select_instance(OFFERS, accelerator="4xT4")
    assert chosen is not None
    assert chosen.instance_type == "g4dn.12xlarge"


def test_select_fewest_accelerators_first() -> None:
    chosen = select_instance(OFFERS, accelerator="A100:2")
    assert chosen is not None
    assert chosen.instance_type == "a2-ultragpu-4g"
    chosen = select_instance(OFFERS, accelerator=AcceleratorSpec.NVIDIA.A100(count=5))
    assert chosen is not None
    assert chosen.instance_type == "p4d.24xlarge"  # cheaper of two 8x


def test_select_respects_the_memory_variant() -> None:
    forty = select_instance(OFFERS, accelerator="A100-40GB")
    eighty = select_instance(OFFERS, accelerator=AcceleratorSpec.NVIDIA.A100(memory="80GB"))
    any_a100 = select_instance(OFFERS, accelerator="A100")
    assert forty is not None
    assert forty.instance_type == "a2-highgpu-1g"
    assert eighty is not None
    assert eighty.instance_type == "a2-ultragpu-1g"
    assert any_a100 is not None
    assert any_a100.instance_type == "a2-highgpu-1g"  # smaller RAM
    chosen = select_instance(OFFERS, accelerator="8xA100-80GB")
    assert chosen is not None
    assert chosen.instance_type == "p4de.24xlarge"


def test_select_tolerates_reported_usable_memory() -> None:
    offers = [offer("gpu-1", 8, 64, ("H100", 1, 79.6), 3.0)]
    assert select_instance(offers, accelerator="H100-80GB") == offers[0]
    assert select_instance(offers, accelerator="H100-40GB") is None


def test_select_mig_spec_needs_the_matching_gpu_memory() -> None:
    chosen = select_instance(OFFERS, accelerator=AcceleratorSpec.NVIDIA.A100(mig="1g.5gb"))
    assert chosen is not None
    assert chosen.accelerator_memory_gb == 40


def test_select_cpu_and_memory_requirements() -> None:
    chosen = select_instance(OFFERS, cpu=4)
    assert chosen is not None
    assert chosen.instance_type == "m7i.xlarge"  # CPU-only ranks first
    chosen = select_instance(OFFERS, cpu=2, memory="12GB")
    assert chosen is not None
    assert chosen.instance_type == "m7i.xlarge"
    chosen = select_instance(OFFERS, memory=60)
    assert chosen is not None
    assert chosen.instance_type == "c7i.8xlarge"
    chosen = select_instance(OFFERS, accelerator="H100", cpu=32, memory="128GB")
    assert chosen is not None
    assert chosen.instance_type == "p5.48xlarge"
    chosen = select_instance(OFFERS, memory="1.5TB")
    assert chosen is not None
    assert chosen.instance_type == "p5.48xlarge"
    assert select_instance(OFFERS, memory="3TB") is None


def test_select_breaks_ties_by_price() -> None:
    offers = [
        offer("pricey", 4, 16, ("L4", 1, 24), 1.0),
        offer("unknown-price", 4, 16, ("L4", 1, 24), None),
        offer("cheap", 4, 16, ("L4", 1, 24), 0.7),
    ]
    chosen = select_instance(offers, accelerator="L4")
    assert chosen is not None
    assert chosen.instance_type == "cheap"


def test_select_matches_names_case_insensitively_and_skips_unavailable() -> None:
    offers = [
        offer("gone", 4, 16, ("l4", 1, 24), 0.5, available=False),
        offer("here", 8, 32, ("l4", 1, 24), 0.9),
    ]
    chosen = select_instance(offers, accelerator="L4")
    assert chosen is not None
    assert chosen.instance_type == "here"


def test_select_returns_none_when_nothing_matches() -> None:
    assert select_instance(OFFERS, accelerator="B200") is None
    assert select_instance(OFFERS, accelerator="16xT4") is None
    assert select_instance([], accelerator="T4") is None


def test_select_validates_its_inputs() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'H100'"):
        select_instance(OFFERS, accelerator="H10")
    with pytest.raises(ConfigurationError) as error:
        select_instance(OFFERS, memory="plenty")
    assert error.value.field == "memory"
    with pytest.raises(ConfigurationError) as error:
        select_instance(OFFERS, cpu=0)
    assert error.value.field == "cpu"


def test_select_with_plugin_accelerators(aws_catalog: AcceleratorCatalog) -> None:
    offers = [
        offer("trn1.32xlarge", 128, 512, ("Trainium1", 16, 32), 21.5),
        offer("trn1.2xlarge", 8, 32, ("Trainium1", 1, 32), 1.3),
        offer("trn2.48xlarge", 192, 2048, ("Trainium2", 16, 96), 40.0),
    ]
    chosen = select_instance(offers, accelerator=AcceleratorSpec.AWS.Trainium(version=1))
    assert chosen is not None
    assert chosen.instance_type == "trn1.2xlarge"
    chosen = select_instance(offers, accelerator="trn2")
    assert chosen is not None
    assert chosen.instance_type == "trn2.48xlarge"
