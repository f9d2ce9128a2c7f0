"""Accelerator names, the catalog that knows them, and the specs users write.

Users spell the same GPU many ways: ``"H100"``, ``"8xH100"``, ``"A100-40GB"``,
``AcceleratorSpec.NVIDIA.H100(mig="3g.40gb")``. This module turns every spelling into one
:class:`AcceleratorSpec`, checked against an :class:`AcceleratorCatalog`, so a typo fails
before any provider is called and the error says what was probably meant.

The catalog is open: core ships NVIDIA, AMD and Google TPU entries
(:data:`BUILTIN_ACCELERATORS`); plugins add their own (the AWS package adds Trainium and
Inferentia) through the accelerator-catalog hook. Factories for built-in entries never load
plugins, so ``import skyward`` and ``AcceleratorSpec.NVIDIA.H100()`` stay fast; only names
the built-ins do not know consult the live, plugin-filled catalog.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

from attrs import Attribute, Factory, field, frozen

from skyward.errors import ConfigurationError, PluginError, PluginNotInstalledError
from skyward.offers import Offer

__all__ = [
    "BUILTIN_ACCELERATORS",
    "MIG_PROFILES",
    "NVIDIA",
    "Accelerator",
    "AcceleratorCatalog",
    "AcceleratorDefinition",
    "AcceleratorSpec",
    "MigProfile",
    "default_catalog",
    "is_amd",
    "is_inferentia",
    "is_nvidia",
    "is_tpu",
    "is_trainium",
    "parse_accelerator",
    "parse_memory_gb",
    "select_instance",
]

_FIELD = "accelerator"
_MIG_NAME = re.compile(r"^\d+g\.\d+gb$")
_MEMORY_SIZE = re.compile(
    r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgtp]?)(?P<binary>i?)(?P<bytes>b?)\s*$",
    re.IGNORECASE,
)
_UNIT_IN_GB = {"": 1.0, "k": 1024.0**-2, "m": 1024.0**-1, "g": 1.0, "t": 1024.0, "p": 1024.0**2}
_COUNT_PREFIX = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?|\.\d+)\s*[x\u00d7]\s*(?P<rest>.+)$", re.I)
_COUNT_SUFFIX = re.compile(r"^(?P<rest>.+?)\s*:\s*(?P<count>\d+(?:\.\d+)?|\.\d+)\s*$")
_SEPARATORS = re.compile(r"[\s_]+")

# Name shapes that identify an accelerator family even when no catalog knows the name
# (the AWS plugin is not installed, or the name is an instance family like "trn1").
_TRAINIUM_NAME = re.compile(r"^(aws-?)?(trainium\d*|trn\d+n?)(\b|$)", re.I)
_INFERENTIA_NAME = re.compile(r"^(aws-?)?(inferentia\d*|inf\d+)(\b|$)", re.I)
_TPU_NAME = re.compile(r"^((google-?)?tpu|v\d+(e|p|litepod)(\b|$))", re.I)
_NVIDIA_NAME = re.compile(r"^(nvidia|tesla|geforce|quadro|rtx)", re.I)
_AMD_NAME = re.compile(r"^(amd|instinct|mi\d{2,3})", re.I)

# TPU slice names ("v5p-8") count TensorCores for generations with two cores per chip, and
# chips for the single-core ones; Google's accelerator-type names follow this rule.
_TPU_CORES_PER_CHIP = {"TPU-v4": 2, "TPU-v5p": 2}


# ---------------------------------------------------------------------------------------
# Validators and converters shared by the data classes
# ---------------------------------------------------------------------------------------


def _require_positive_int(_instance: object, attribute: Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            _FIELD,
            f"{attribute.name} must be a positive whole number, got {value!r}",
            "Give a number like 1, 7 or 80",
        )


def _require_name(_instance: object, attribute: Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            _FIELD, f"{attribute.name} must be a non-empty string, got {value!r}", 'Use "H100"'
        )
    if value != value.strip() or ":" in value or _SEPARATORS.search(value):
        raise ConfigurationError(
            _FIELD,
            f"{attribute.name} {value!r} may not contain spaces, underscores or ':'",
            'Use dashes between words, like "TPU-v5p"',
        )


def _require_mig_name(_instance: object, attribute: Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _MIG_NAME.match(value):
        raise ConfigurationError(
            _FIELD,
            f"{attribute.name} {value!r} is not a MIG profile name",
            'MIG profiles look like "3g.40gb" (compute slices, then memory)',
        )


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


def _str_tuple(values: Iterable[str] | str) -> tuple[str, ...]:
    # A lone string is one entry, not a sequence of characters.
    return (values,) if isinstance(values, str) else tuple(values)


def _mig_table(
    values: Mapping[int, Iterable[MigProfile]],
) -> dict[int, tuple[MigProfile, ...]]:
    # A plain dict (not a read-only proxy) so definitions stay picklable for the nodes.
    return {memory: tuple(profiles) for memory, profiles in values.items()}


def _format_count(count: float) -> str:
    return str(int(count)) if float(count).is_integer() else repr(float(count))


def _key(name: str) -> str:
    """How catalog names compare: case-insensitive, spaces and underscores read as dashes."""
    return _SEPARATORS.sub("-", name.strip()).lower()


# ---------------------------------------------------------------------------------------
# MIG profiles
# ---------------------------------------------------------------------------------------


@frozen
class MigProfile:
    """One way to split a GPU with NVIDIA Multi-Instance GPU (MIG).

    Skyward runs one worker per MIG instance, so ``workers`` is how many tasks one physical
    GPU runs at once with this profile.
    """

    name: str = field(validator=_require_mig_name)
    """NVIDIA's profile name: compute slices, then memory (``"3g.40gb"``)."""
    workers: int = field(validator=_require_positive_int)
    """How many instances of this profile fit on one GPU."""
    memory_gb: int = field(validator=_require_positive_int)
    """Memory of each instance, in GB."""


_MIG_80GB = (
    MigProfile("1g.10gb", 7, 10),
    MigProfile("1g.20gb", 4, 20),
    MigProfile("2g.20gb", 3, 20),
    MigProfile("3g.40gb", 2, 40),
    MigProfile("4g.40gb", 1, 40),
    MigProfile("7g.80gb", 1, 80),
)
_MIG_40GB = (
    MigProfile("1g.5gb", 7, 5),
    MigProfile("2g.10gb", 3, 10),
    MigProfile("3g.20gb", 2, 20),
    MigProfile("4g.20gb", 1, 20),
)

MIG_PROFILES: Mapping[int, tuple[MigProfile, ...]] = MappingProxyType(
    {80: _MIG_80GB, 40: _MIG_40GB}
)
"""MIG profiles by GPU memory in GB: the 80GB table serves H100 and A100, 40GB the A100."""


# ---------------------------------------------------------------------------------------
# Catalog entries
# ---------------------------------------------------------------------------------------


@frozen
class AcceleratorDefinition:
    """One kind of accelerator the catalog knows, with every variant a user may ask for.

    Definitions are what plugins register: a provider package that sells a chip core does
    not know adds its definition, and from then on the name parses, validates and selects
    like a built-in one.
    """

    name: str = field(validator=_require_name)
    """Canonical name (``"H100"``); offers use it in :attr:`Offer.accelerator`."""
    vendor: str = field(validator=_require_name)
    """Maker: ``"NVIDIA"``, ``"AMD"``, ``"Google"``, ``"AWS"`` or any other name."""
    memory_gb: tuple[int, ...] = field(default=(), converter=_int_tuple)
    """Memory variants in GB, the default first (``(80, 40)`` for the A100); may be empty."""
    form_factors: tuple[str, ...] = field(default=(), converter=_str_tuple)
    """Board variants a user may ask for (``("SXM", "PCIe", "NVL")``); may be empty."""
    mig_profiles: Mapping[int, tuple[MigProfile, ...]] = field(
        factory=dict, converter=_mig_table, hash=False
    )
    """MIG profiles by memory variant; empty when the accelerator cannot be partitioned."""
    aliases: tuple[str, ...] = field(default=(), converter=_str_tuple)
    """Other accepted spellings of the name (``("Tesla-T4",)``)."""
    family: str | None = None
    """Architecture or product line (``"Hopper"``, ``"TPU"``, ``"Trainium"``)."""
    notes: str | None = None
    """Free text for humans: what the chip is good for, caveats."""

    def __attrs_post_init__(self) -> None:
        for memory in self.memory_gb:
            _require_positive_int(self, _MEMORY_ATTRIBUTE, memory)
        for alias in self.aliases:
            _require_name(self, _ALIAS_ATTRIBUTE, alias)
        for memory, profiles in self.mig_profiles.items():
            if memory not in self.memory_gb:
                raise ConfigurationError(
                    _FIELD,
                    f"{self.name} has MIG profiles for {memory}GB, which is not one of its "
                    f"memory variants {list(self.memory_gb)}",
                    "Key mig_profiles by a value from memory_gb",
                )
            for profile in profiles:
                if not isinstance(profile, MigProfile):
                    raise ConfigurationError(
                        _FIELD,
                        f"{self.name} MIG profiles must be MigProfile objects, got {profile!r}",
                        'Use MigProfile("3g.40gb", workers=2, memory_gb=40)',
                    )

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by every alias: all spellings that find this entry."""
        return (self.name, *self.aliases)

    @property
    def default_memory_gb(self) -> int | None:
        """The memory variant a user gets when they do not choose one."""
        return self.memory_gb[0] if self.memory_gb else None

    def find_mig_profile(self, profile: str, memory_gb: int | None = None) -> MigProfile | None:
        """The MIG profile called ``profile`` on the ``memory_gb`` variant (any when ``None``)."""
        wanted = profile.strip().lower()
        tables = (
            [self.mig_profiles.get(memory_gb, ())]
            if memory_gb is not None
            else [self.mig_profiles[m] for m in self.memory_gb if m in self.mig_profiles]
        )
        for table in tables:
            for candidate in table:
                if candidate.name == wanted:
                    return candidate
        return None


_MEMORY_ATTRIBUTE = next(a for a in AcceleratorDefinition.__attrs_attrs__ if a.name == "memory_gb")
_ALIAS_ATTRIBUTE = next(a for a in AcceleratorDefinition.__attrs_attrs__ if a.name == "aliases")


def _nvidia(
    name: str,
    *memory: int,
    form_factors: tuple[str, ...] = (),
    mig: Mapping[int, tuple[MigProfile, ...]] | None = None,
    aliases: tuple[str, ...] = (),
    family: str | None = None,
) -> AcceleratorDefinition:
    return AcceleratorDefinition(
        name=name,
        vendor="NVIDIA",
        memory_gb=memory,
        form_factors=form_factors,
        mig_profiles=mig or {},
        aliases=aliases,
        family=family,
    )


def _tpu(version: str, memory: int, *aliases: str, notes: str) -> AcceleratorDefinition:
    return AcceleratorDefinition(
        name=f"TPU-{version}",
        vendor="Google",
        memory_gb=(memory,),
        aliases=(version, f"TPU{version}", *aliases),
        family="TPU",
        notes=notes,
    )


BUILTIN_ACCELERATORS: tuple[AcceleratorDefinition, ...] = (
    _nvidia("T4", 16, aliases=("Tesla-T4",), family="Turing"),
    _nvidia("L4", 24, family="Ada Lovelace"),
    _nvidia("L40", 48, family="Ada Lovelace"),
    _nvidia("L40S", 48, family="Ada Lovelace"),
    _nvidia("A10", 24, family="Ampere"),
    _nvidia("A10G", 24, family="Ampere"),
    _nvidia(
        "A100",
        80,
        40,
        form_factors=("SXM", "PCIe"),
        mig={80: _MIG_80GB, 40: _MIG_40GB},
        family="Ampere",
    ),
    _nvidia(
        "H100",
        80,
        40,
        form_factors=("SXM", "PCIe", "NVL"),
        mig={80: _MIG_80GB},
        family="Hopper",
    ),
    _nvidia("H200", 141, family="Hopper"),
    _nvidia("GH200", 96, family="Grace Hopper"),
    _nvidia("B100", 192, family="Blackwell"),
    _nvidia("B200", 192, family="Blackwell"),
    _nvidia("GB200", 384, family="Grace Blackwell"),
    _nvidia("V100", 16, 32, aliases=("Tesla-V100",), family="Volta"),
    AcceleratorDefinition("MI300X", "AMD", (192,), family="Instinct CDNA 3"),
    AcceleratorDefinition("MI250X", "AMD", (128,), family="Instinct CDNA 2"),
    AcceleratorDefinition("MI210", "AMD", (64,), family="Instinct CDNA 2"),
    AcceleratorDefinition("MI100", "AMD", (32,), family="Instinct CDNA"),
    _tpu("v4", 32, notes="Slice names count TensorCores: v4-8 is 4 chips."),
    _tpu("v5e", 16, "v5litepod", notes="Slice names count chips: v5litepod-8 is 8 chips."),
    _tpu("v5p", 95, notes="Slice names count TensorCores: v5p-8 is 4 chips."),
    _tpu("v6e", 32, "Trillium", notes="Slice names count chips: v6e-8 is 8 chips."),
)
"""Accelerators core knows without any plugin: NVIDIA GPUs, AMD Instinct, Google TPUs."""


# ---------------------------------------------------------------------------------------
# Specs: what the user asked for
# ---------------------------------------------------------------------------------------


def _require_count(_instance: object, attribute: Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            _FIELD,
            f"count must be a positive number, got {value!r}",
            "Use count=1 or more (fractions like 0.5 ask for a share of one GPU)",
        )


def _gpu_memory(value: object) -> int:
    """A GPU memory variant in whole GB from ``"40GB"``, ``"40gb"``, ``"40"`` or ``40``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigurationError(
            _FIELD, f'memory must be a size like "40GB", got {value!r}', 'Use memory="40GB"'
        )
    try:
        size = parse_memory_gb(value)
    except ConfigurationError as error:
        raise ConfigurationError(_FIELD, error.problem, 'Use memory="40GB"') from None
    rounded = round(size)
    if abs(size - rounded) > 1e-6 or rounded <= 0:
        raise ConfigurationError(
            _FIELD,
            f"GPU memory variants are whole GB, got {value!r}",
            'Use memory="40GB" or memory="80GB"',
        )
    return rounded


def _normalize_memory(value: str | int | None) -> str | None:
    return None if value is None else f"{_gpu_memory(value)}GB"


def _normalize_mig(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MIG_NAME.match(value.strip().lower()):
        raise ConfigurationError(
            _FIELD,
            f"{value!r} is not a MIG profile name",
            'MIG profiles look like "3g.40gb" (compute slices, then memory)',
        )
    return value.strip().lower()


def _infer_vendor(spec: AcceleratorSpec) -> str:
    """The vendor of a spec built by hand, from the built-in catalog or the name's shape."""
    definition = _builtin_catalog().find(spec.name)
    if definition is not None:
        return definition.vendor
    return _vendor_from_shape(spec.name)


def _vendor_from_shape(name: str) -> str:
    if _TRAINIUM_NAME.match(name) or _INFERENTIA_NAME.match(name):
        return "AWS"
    if _TPU_NAME.match(name):
        return "Google"
    if _NVIDIA_NAME.match(name):
        return "NVIDIA"
    if _AMD_NAME.match(name):
        return "AMD"
    return ""


@frozen
class AcceleratorSpec:
    """What a pool asks for: which accelerator, how many per node, and which variant.

    Build one with a factory (``AcceleratorSpec.NVIDIA.A100(memory="40GB")``), or let a
    pool parse a string (``"A100-40GB"``); both check the name and variants against the
    catalog. Constructing the class directly only checks the shape of each field, which is
    what plugins need for names the catalog learns later.
    """

    name: str = field(validator=_require_name)
    """Canonical accelerator name (``"H100"``)."""
    count: float = field(default=1, validator=_require_count)
    """Accelerators per node; a fraction asks for a share of one (AWS G6f)."""
    memory: str | None = field(default=None, converter=_normalize_memory)
    """Memory variant such as ``"40GB"``; ``None`` accepts any variant of the accelerator."""
    form_factor: str | None = None
    """Board variant (``"SXM"``, ``"PCIe"``, ``"NVL"``); ``None`` accepts any."""
    mig: str | None = field(default=None, converter=_normalize_mig)
    """MIG profile (``"3g.40gb"``) each GPU is split into; ``None`` for whole GPUs."""
    vendor: str = field(default=Factory(_infer_vendor, takes_self=True))
    """Maker of the accelerator; worked out from the name when not given."""

    @property
    def memory_gb(self) -> int | None:
        """The requested memory variant in GB, ``None`` when any variant will do."""
        return None if self.memory is None else _gpu_memory(self.memory)

    @property
    def mig_workers(self) -> int:
        """Workers one GPU runs: the MIG profile's instance count, 1 without MIG."""
        if self.mig is None:
            return 1
        return _mig_profile_of(self).workers

    def __str__(self) -> str:
        """The canonical spelling, which :meth:`AcceleratorCatalog.parse` reads back."""
        text = self.name
        if self.memory is not None:
            text += f"-{self.memory}"
        if self.form_factor is not None:
            text += f"-{self.form_factor}"
        if self.mig is not None:
            text += f"-MIG-{self.mig}"
        return text if self.count == 1 else f"{_format_count(self.count)}x{text}"

    class NVIDIA:
        """Factories for NVIDIA GPUs; each checks its arguments against the built-in entry."""

        @staticmethod
        def H100(
            count: float = 1,
            memory: str | int | None = None,
            mig: str | None = None,
            form_factor: str | None = None,
        ) -> AcceleratorSpec:
            """H100 (80GB by default; SXM, PCIe or NVL; MIG capable on 80GB)."""
            return _builtin_catalog().spec(
                "H100", count=count, memory=memory, mig=mig, form_factor=form_factor
            )

        @staticmethod
        def H200(count: float = 1) -> AcceleratorSpec:
            """H200, 141GB."""
            return _builtin_catalog().spec("H200", count=count)

        @staticmethod
        def A100(
            count: float = 1,
            memory: str | int | None = None,
            mig: str | None = None,
            form_factor: str | None = None,
        ) -> AcceleratorSpec:
            """A100 (80GB by default, or 40GB; MIG capable on both)."""
            return _builtin_catalog().spec(
                "A100", count=count, memory=memory, mig=mig, form_factor=form_factor
            )

        @staticmethod
        def B100(count: float = 1) -> AcceleratorSpec:
            """B100 (Blackwell), 192GB."""
            return _builtin_catalog().spec("B100", count=count)

        @staticmethod
        def B200(count: float = 1) -> AcceleratorSpec:
            """B200 (Blackwell), 192GB."""
            return _builtin_catalog().spec("B200", count=count)

        @staticmethod
        def GB200(count: float = 1) -> AcceleratorSpec:
            """GB200 (Grace Blackwell), 384GB."""
            return _builtin_catalog().spec("GB200", count=count)

        @staticmethod
        def GH200(count: float = 1) -> AcceleratorSpec:
            """GH200 (Grace Hopper), 96GB."""
            return _builtin_catalog().spec("GH200", count=count)

        @staticmethod
        def L4(count: float = 1) -> AcceleratorSpec:
            """L4, 24GB."""
            return _builtin_catalog().spec("L4", count=count)

        @staticmethod
        def L40(count: float = 1) -> AcceleratorSpec:
            """L40, 48GB."""
            return _builtin_catalog().spec("L40", count=count)

        @staticmethod
        def L40S(count: float = 1) -> AcceleratorSpec:
            """L40S, 48GB."""
            return _builtin_catalog().spec("L40S", count=count)

        @staticmethod
        def T4(count: float = 1) -> AcceleratorSpec:
            """T4, 16GB."""
            return _builtin_catalog().spec("T4", count=count)

        @staticmethod
        def A10(count: float = 1) -> AcceleratorSpec:
            """A10, 24GB."""
            return _builtin_catalog().spec("A10", count=count)

        @staticmethod
        def A10G(count: float = 1) -> AcceleratorSpec:
            """A10G (the AWS variant of the A10), 24GB."""
            return _builtin_catalog().spec("A10G", count=count)

        @staticmethod
        def V100(count: float = 1, memory: str | int | None = None) -> AcceleratorSpec:
            """V100 (16GB by default, or 32GB)."""
            return _builtin_catalog().spec("V100", count=count, memory=memory)

    class AMD:
        """Factories for AMD Instinct GPUs."""

        @staticmethod
        def MI(model: str, count: float = 1) -> AcceleratorSpec:
            """An Instinct GPU by model number: ``MI("300X")`` is the MI300X."""
            if not isinstance(model, str) or not model.strip():
                raise ConfigurationError(
                    _FIELD, f"AMD model must be a string, got {model!r}", 'Use AMD.MI("300X")'
                )
            name = model.strip().upper()
            name = name if name.startswith("MI") else f"MI{name}"
            catalog = _catalog_knowing(name)
            definition = catalog.find(name)
            if definition is None or definition.vendor.upper() != "AMD":
                models = [d.name.removeprefix("MI") for d in catalog.by_vendor("AMD")]
                raise ConfigurationError(
                    _FIELD,
                    f"unknown AMD accelerator {name!r}",
                    _suggestion(model.strip().upper().removeprefix("MI"), models)
                    + f"Known models: {', '.join(models)}",
                )
            return catalog.spec(definition.name, count=count)

    class Google:
        """Factories for Google Cloud TPUs."""

        @staticmethod
        def TPU(version: str, count: float = 1) -> AcceleratorSpec:
            """``count`` chips of one TPU generation (``version="v5p"``)."""
            catalog, definition = _tpu_definition(version)
            return catalog.spec(definition.name, count=count)

        @staticmethod
        def TPUSlice(slice_name: str) -> AcceleratorSpec:
            """A TPU slice by Google's accelerator-type name (``"v5p-8"``, ``"v6e-16"``).

            The number follows Google's rule: it counts TensorCores on v4 and v5p (two per
            chip, so ``"v5p-8"`` is 4 chips) and chips on v5e and v6e. The spec's ``count``
            is always chips, the unit every other accelerator uses.
            """
            match = re.match(r"^\s*(?P<version>.+?)-(?P<size>\d+)\s*$", str(slice_name))
            if match is None:
                raise ConfigurationError(
                    _FIELD,
                    f"{slice_name!r} is not a TPU slice name",
                    'Use a generation and a size, like "v5p-8" or "v6e-16"',
                )
            catalog, definition = _tpu_definition(match["version"])
            return catalog.spec(definition.name, count=_tpu_chips(definition, match["size"]))

    AWS: ClassVar[_AwsFactories]
    """Trainium and Inferentia factories, resolved from the plugin catalog when called."""


class _AwsFactories:
    """``AcceleratorSpec.AWS``: any attribute is a factory for an AWS-registered accelerator.

    Core does not know AWS chips; the AWS plugin registers them. Looking the name up only
    when the factory is called keeps plugin loading lazy and lets the error name the
    missing package.
    """

    def __getattr__(self, family: str) -> Callable[..., AcceleratorSpec]:
        if family.startswith("_"):
            raise AttributeError(family)

        def factory(version: int | str | None = None, count: float = 1) -> AcceleratorSpec:
            return _aws_spec(family, version, count)

        factory.__name__ = family
        factory.__qualname__ = f"AcceleratorSpec.AWS.{family}"
        factory.__doc__ = f"{family} (version=...) from the AWS plugin's accelerator catalog."
        return factory

    def __repr__(self) -> str:
        return "AcceleratorSpec.AWS"


AcceleratorSpec.AWS = _AwsFactories()

Accelerator = AcceleratorSpec
"""The README's name for :class:`AcceleratorSpec`; both spellings are the same class."""

NVIDIA: TypeAlias = Literal[
    "T4",
    "L4",
    "L40",
    "L40S",
    "A10",
    "A10G",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H100-80GB",
    "H100-SXM",
    "H100-PCIe",
    "H100-NVL",
    "H200",
    "B100",
    "B200",
    "GB200",
    "GH200",
    "V100",
    "V100-16GB",
    "V100-32GB",
]
"""Every NVIDIA spelling core accepts as a string, for type hints (``gpu: sky.NVIDIA``)."""


# ---------------------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------------------


def _closest(wanted: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``wanted`` (ignoring case), ``None`` when none is close."""
    by_key = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(wanted.lower(), list(by_key), n=1, cutoff=0.5)
    return by_key[close[0]] if close else None


def _suggestion(wanted: str, candidates: Iterable[str]) -> str:
    """``"Did you mean 'H100'? "`` when one candidate is close to ``wanted``, else ``""``."""
    closest = _closest(wanted, candidates)
    return "" if closest is None else f"Did you mean {closest!r}? "


class AcceleratorCatalog:
    """Every accelerator Skyward can name, with the variants each one comes in.

    The catalog is the single authority for accelerator names: it parses strings,
    validates factory arguments and tells a clashing plugin off. Core fills one with
    :data:`BUILTIN_ACCELERATORS` plus what plugins register; tests build their own.
    """

    def __init__(self, definitions: Iterable[AcceleratorDefinition] = ()) -> None:
        self._definitions: dict[str, AcceleratorDefinition] = {}
        self._owners: dict[str, str] = {}
        self._index: dict[str, str] = {}
        for definition in definitions:
            self.register(definition)

    @classmethod
    def with_builtins(cls) -> AcceleratorCatalog:
        """A new catalog holding only :data:`BUILTIN_ACCELERATORS`."""
        return cls(BUILTIN_ACCELERATORS)

    def register(self, definition: AcceleratorDefinition, *, plugin: str = "skyward") -> None:
        """Add ``definition``; ``plugin`` is whom to blame if it clashes.

        Registering an identical definition again does nothing, so a plugin loaded twice
        is harmless. Any name or alias already taken by a different definition raises
        :class:`~skyward.errors.PluginError`, because two meanings for one name would make
        selection depend on load order.
        """
        if not isinstance(definition, AcceleratorDefinition):
            raise PluginError(
                plugin,
                f"accelerator catalogs take AcceleratorDefinition objects, "
                f"got {type(definition).__name__}",
            )
        if self._definitions.get(definition.name) == definition:
            return
        keys = {_key(name) for name in definition.names}
        for key in keys:
            taken = self._index.get(key)
            if taken is not None:
                raise PluginError(
                    plugin,
                    f"accelerator name {key!r} is already registered as {taken!r} by "
                    f"{self._owners[taken]!r} with a different definition; rename yours "
                    f"or drop the alias",
                )
        self._definitions[definition.name] = definition
        self._owners[definition.name] = plugin
        for key in keys:
            self._index[key] = definition.name

    def find(self, name: str) -> AcceleratorDefinition | None:
        """The definition called ``name`` (any case, or an alias), ``None`` when unknown."""
        canonical = self._index.get(_key(name))
        return None if canonical is None else self._definitions[canonical]

    def get(self, name: str) -> AcceleratorDefinition:
        """The definition called ``name``; unknown names raise with the closest suggestion."""
        definition = self.find(name) if isinstance(name, str) else None
        if definition is None:
            raise self._unknown(str(name))
        return definition

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._owners[self.get(name).name]

    def names(self) -> tuple[str, ...]:
        """Canonical names, sorted for humans."""
        return tuple(sorted(self._definitions, key=str.lower))

    def definitions(self) -> tuple[AcceleratorDefinition, ...]:
        """Every definition, in registration order."""
        return tuple(self._definitions.values())

    def by_vendor(self, vendor: str) -> tuple[AcceleratorDefinition, ...]:
        """Definitions made by ``vendor`` (any case), in registration order."""
        return tuple(d for d in self._definitions.values() if d.vendor.lower() == vendor.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[AcceleratorDefinition]:
        return iter(self.definitions())

    def __len__(self) -> int:
        return len(self._definitions)

    def __repr__(self) -> str:
        return f"AcceleratorCatalog({len(self)} accelerators)"

    def spec(
        self,
        name: str,
        *,
        count: float = 1,
        memory: str | int | None = None,
        form_factor: str | None = None,
        mig: str | None = None,
    ) -> AcceleratorSpec:
        """A validated spec for ``name``: every variant must exist on that accelerator.

        A MIG profile without ``memory`` picks the memory variant the profile belongs to,
        so ``A100(mig="1g.5gb")`` means the 40GB A100.
        """
        definition = self.get(name)
        memory_gb = None if memory is None else _gpu_memory(memory)
        if memory_gb is not None and definition.memory_gb and memory_gb not in definition.memory_gb:
            raise ConfigurationError(
                _FIELD,
                f"{definition.name} has no {memory_gb}GB variant",
                f"Valid memory for {definition.name}: "
                + ", ".join(f"{m}GB" for m in definition.memory_gb),
            )
        canonical_form = None if form_factor is None else self._form_factor(definition, form_factor)
        profile = None if mig is None else self._mig(definition, mig, memory_gb)
        if profile is not None and memory_gb is None:
            memory_gb = next(
                m for m in definition.memory_gb if profile in definition.mig_profiles.get(m, ())
            )
        return AcceleratorSpec(
            name=definition.name,
            count=count,
            memory=None if memory_gb is None else f"{memory_gb}GB",
            form_factor=canonical_form,
            mig=None if profile is None else profile.name,
            vendor=definition.vendor,
        )

    def parse(self, text: str) -> AcceleratorSpec:
        """Read a string such as ``"H100"``, ``"8xH100"``, ``"A100-40GB"`` or ``"H100:8"``.

        After the name come dash-separated qualifiers in any order: a memory variant
        (``40GB``), a form factor (``SXM``), a MIG profile (``3g.40gb``, optionally after
        ``MIG``) or, for TPUs, a slice size (``TPU-v5p-8``). ``str(spec)`` reads back.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(
                _FIELD, f"expected an accelerator name, got {text!r}", 'Use a name like "H100"'
            )
        count, base = _split_count(text)
        found = self._split_name(base)
        if found is None:
            raise self._unknown(base)
        definition, qualifiers = found
        memory: int | None = None
        form_factor: str | None = None
        mig: str | None = None
        slice_chips: float | None = None
        expect_mig = False
        for qualifier in qualifiers:
            lowered = qualifier.lower()
            if lowered == "mig" and not expect_mig and mig is None:
                expect_mig = True
                continue
            if _MIG_NAME.match(lowered):
                self._once(text, "MIG profile", mig)
                mig, expect_mig = lowered, False
            elif expect_mig:
                break  # reported below: "MIG" must be followed by a profile
            elif _MEMORY_SIZE.match(qualifier) and not qualifier.isdigit():
                self._once(text, "memory", memory)
                memory = _gpu_memory(qualifier)
            elif lowered in (f.lower() for f in definition.form_factors):
                self._once(text, "form factor", form_factor)
                form_factor = qualifier
            elif qualifier.isdigit() and definition.family == "TPU":
                self._once(text, "slice size", slice_chips)
                slice_chips = _tpu_chips(definition, qualifier)
            else:
                raise self._bad_qualifier(definition, qualifier)
        if expect_mig:
            raise ConfigurationError(
                _FIELD,
                f"{text!r} says MIG but names no profile",
                f'Add a profile, like "{definition.name}-MIG-{self._any_mig_name(definition)}"',
            )
        if slice_chips is not None:
            if count is not None:
                raise ConfigurationError(
                    _FIELD,
                    f"{text!r} gives both a count and a TPU slice size",
                    'Use either "4xTPU-v5p" or "v5p-8"',
                )
            count = slice_chips
        return self.spec(
            definition.name,
            count=1 if count is None else count,
            memory=memory,
            form_factor=form_factor,
            mig=mig,
        )

    # -- helpers ------------------------------------------------------------------------

    def _split_name(self, base: str) -> tuple[AcceleratorDefinition, list[str]] | None:
        """The longest known name at the start of ``base`` and the qualifiers after it."""
        tokens = [t for t in _SEPARATORS.sub("-", base.strip()).split("-") if t]
        vendors = {d.vendor.lower() for d in self._definitions.values()}
        attempts = [tokens]
        if len(tokens) > 1 and tokens[0].lower() in vendors:
            attempts.append(tokens[1:])  # "NVIDIA-H100", "AMD-MI300X"
        for words in attempts:
            for end in range(len(words), 0, -1):
                definition = self.find("-".join(words[:end]))
                if definition is not None:
                    return definition, words[end:]
        return None

    def _unknown(self, name: str) -> ConfigurationError:
        spellings = [n for d in self._definitions.values() for n in d.names]
        first_word = _SEPARATORS.sub("-", name.strip()).split("-")[0]
        closest = _closest(first_word, spellings) or _closest(name.strip(), spellings)
        # Suggest the canonical name, not whichever alias happened to be closest.
        hint = "" if closest is None else f"Did you mean {self.get(closest).name!r}? "
        return ConfigurationError(
            _FIELD,
            f"unknown accelerator {name!r}",
            f"{hint}Known: {', '.join(self.names())}",
        )

    def _form_factor(self, definition: AcceleratorDefinition, form_factor: str) -> str:
        for candidate in definition.form_factors:
            if candidate.lower() == str(form_factor).strip().lower():
                return candidate
        if not definition.form_factors:
            raise ConfigurationError(
                _FIELD,
                f"{definition.name} has no form factor variants (got {form_factor!r})",
                "Drop form_factor",
            )
        raise ConfigurationError(
            _FIELD,
            f"{definition.name} has no {form_factor!r} form factor",
            f"Valid form factors for {definition.name}: {', '.join(definition.form_factors)}",
        )

    def _mig(
        self, definition: AcceleratorDefinition, mig: str, memory_gb: int | None
    ) -> MigProfile:
        name = _normalize_mig(mig)
        assert name is not None
        if not definition.mig_profiles:
            capable = [d.name for d in self._definitions.values() if d.mig_profiles]
            raise ConfigurationError(
                _FIELD,
                f"{definition.name} does not support MIG",
                f"MIG works on: {', '.join(capable)}" if capable else "Drop mig",
            )
        profile = definition.find_mig_profile(name, memory_gb)
        if profile is not None:
            return profile
        if memory_gb is not None:
            valid = definition.mig_profiles.get(memory_gb, ())
            if not valid:
                raise ConfigurationError(
                    _FIELD,
                    f"{definition.name} {memory_gb}GB does not support MIG",
                    f"MIG works on {definition.name} "
                    + ", ".join(f"{m}GB" for m in definition.mig_profiles),
                )
            raise ConfigurationError(
                _FIELD,
                f"{definition.name} {memory_gb}GB has no MIG profile {name!r}",
                f"Valid profiles for {definition.name} {memory_gb}GB: "
                + ", ".join(p.name for p in valid),
            )
        tables = "; ".join(
            f"{m}GB: {', '.join(p.name for p in profiles)}"
            for m, profiles in definition.mig_profiles.items()
        )
        raise ConfigurationError(
            _FIELD,
            f"{definition.name} has no MIG profile {name!r}",
            f"Valid profiles for {definition.name} by memory: {tables}",
        )

    @staticmethod
    def _any_mig_name(definition: AcceleratorDefinition) -> str:
        for profiles in definition.mig_profiles.values():
            if profiles:
                return profiles[0].name
        return "3g.40gb"

    @staticmethod
    def _once(text: str, what: str, current: object) -> None:
        if current is not None:
            raise ConfigurationError(
                _FIELD, f"{text!r} gives the {what} twice", f"Give the {what} once"
            )

    @staticmethod
    def _bad_qualifier(definition: AcceleratorDefinition, qualifier: str) -> ConfigurationError:
        valid: list[str] = []
        if definition.memory_gb:
            valid.append("memory " + ", ".join(f"{m}GB" for m in definition.memory_gb))
        if definition.form_factors:
            valid.append("form factors " + ", ".join(definition.form_factors))
        if definition.mig_profiles:
            valid.append("MIG profiles like " + AcceleratorCatalog._any_mig_name(definition))
        if definition.family == "TPU":
            valid.append(f"a slice size like {definition.name}-8")
        fix = (
            f"Valid after {definition.name}: {'; '.join(valid)}"
            if valid
            else (f"{definition.name} takes no qualifiers")
        )
        return ConfigurationError(
            _FIELD, f"{qualifier!r} is not a variant of {definition.name}", fix
        )


def _split_count(text: str) -> tuple[float | None, str]:
    """Separate ``"8xH100"`` or ``"H100:8"`` into the count and the rest."""
    prefix = _COUNT_PREFIX.match(text)
    suffix = _COUNT_SUFFIX.match(prefix["rest"] if prefix else text)
    if prefix and suffix:
        raise ConfigurationError(
            _FIELD, f"{text!r} gives the count twice", 'Use either "8xH100" or "H100:8"'
        )
    if prefix:
        return float(prefix["count"]), prefix["rest"].strip()
    if suffix:
        return float(suffix["count"]), suffix["rest"].strip()
    return None, text.strip()


def default_catalog() -> AcceleratorCatalog:
    """A new catalog with the built-in accelerators only (no plugins loaded)."""
    return AcceleratorCatalog.with_builtins()


@cache
def _builtin_catalog() -> AcceleratorCatalog:
    # Private and never handed out, so nobody can register into it by accident.
    return AcceleratorCatalog.with_builtins()


_live_source: Callable[[], AcceleratorCatalog] | None = None


def use_live_catalog(source: Callable[[], AcceleratorCatalog]) -> None:
    """Where the plugin-filled catalog comes from (:mod:`skyward.plugins` says, when it is
    imported, which ``import skyward`` does), so this module never imports the plugins."""
    global _live_source
    _live_source = source


def _live_catalog() -> AcceleratorCatalog:
    """The catalog with builtins plus every plugin's entries; loads plugins on first use."""
    if _live_source is None:
        return _builtin_catalog()
    return _live_source()


def _catalog_knowing(name: str) -> AcceleratorCatalog:
    """The built-in catalog when it knows ``name``; otherwise the plugin-filled one."""
    builtin = _builtin_catalog()
    return builtin if builtin._split_name(_split_count(name)[1]) else _live_catalog()


def parse_accelerator(
    value: str | AcceleratorSpec, *, catalog: AcceleratorCatalog | None = None
) -> AcceleratorSpec:
    """What a pool's ``accelerator=`` means: a spec passes through, a string is parsed.

    Without ``catalog``, names core knows are parsed without loading plugins; any other
    name is looked up in the live catalog, so plugin accelerators work as strings too.
    """
    if isinstance(value, AcceleratorSpec):
        return value
    raw: object = value  # checked at run time: callers pass whatever the user typed
    if not isinstance(raw, str):
        raise ConfigurationError(
            _FIELD,
            f"expected a name or an AcceleratorSpec, got {type(raw).__name__}",
            'Use a name like "H100" or AcceleratorSpec.NVIDIA.H100()',
        )
    if catalog is not None:
        return catalog.parse(raw)
    return _catalog_knowing(raw).parse(raw)


# ---------------------------------------------------------------------------------------
# TPU and AWS factory helpers
# ---------------------------------------------------------------------------------------


def _tpu_definition(version: str) -> tuple[AcceleratorCatalog, AcceleratorDefinition]:
    text = str(version).strip()
    for candidate in (text, f"TPU-{text}"):
        catalog = _catalog_knowing(candidate)
        definition = catalog.find(candidate)
        if definition is not None and definition.family == "TPU":
            return catalog, definition
    tpus = _builtin_catalog().by_vendor("Google")
    versions = [d.name.removeprefix("TPU-") for d in tpus if d.family == "TPU"]
    raise ConfigurationError(
        _FIELD,
        f"unknown TPU version {version!r}",
        _suggestion(text.removeprefix("TPU-"), versions) + f"Known: {', '.join(versions)}",
    )


def _tpu_chips(definition: AcceleratorDefinition, size: str) -> int:
    cores = int(size)
    per_chip = _TPU_CORES_PER_CHIP.get(definition.name, 1)
    if cores <= 0 or cores % per_chip:
        version = definition.name.removeprefix("TPU-")
        raise ConfigurationError(
            _FIELD,
            f"{version}-{size} is not a valid slice: {version} slice sizes count TensorCores, "
            f"{per_chip} per chip",
            f'Use a size that is a multiple of {per_chip}, like "{version}-{per_chip * 4}"',
        )
    return cores // per_chip


def _aws_spec(family: str, version: int | str | None, count: float) -> AcceleratorSpec:
    catalog = _live_catalog()
    aws = catalog.by_vendor("AWS")
    if not aws:
        raise PluginNotInstalledError(
            family,
            f'AcceleratorSpec.AWS.{family} comes from the AWS plugin: pip install "skyward[aws]"',
        )
    wanted = family if version is None else f"{family}{version}"
    candidates = [wanted]
    if version is not None:
        candidates += [f"{family}-{version}", f"{family}v{version}"]
        if str(version) == "1":
            candidates.append(family)
    for candidate in candidates:
        definition = catalog.find(candidate)
        if definition is not None and definition.vendor.upper() == "AWS":
            return catalog.spec(definition.name, count=count)
    known = [d.name for d in aws]
    raise ConfigurationError(
        _FIELD,
        f"unknown AWS accelerator {wanted!r}",
        _suggestion(wanted, known) + f"Known AWS accelerators: {', '.join(known)}",
    )


def _mig_profile_of(spec: AcceleratorSpec) -> MigProfile:
    assert spec.mig is not None
    definition = _builtin_catalog().find(spec.name)
    if definition is not None:
        profile = definition.find_mig_profile(spec.mig, spec.memory_gb)
        if profile is not None:
            return profile
    tables: list[Mapping[int, tuple[MigProfile, ...]]] = []
    if definition is None:
        live = _live_catalog().find(spec.name)
        if live is not None:
            tables.append(live.mig_profiles)
    tables.append(MIG_PROFILES)
    for table in tables:
        for memory, profiles in table.items():
            if spec.memory_gb is not None and memory != spec.memory_gb:
                continue
            for profile in profiles:
                if profile.name == spec.mig:
                    return profile
    raise ConfigurationError(
        _FIELD,
        f"{spec.name} has no MIG profile {spec.mig!r}",
        "Build the spec with a factory or AcceleratorCatalog.spec() to see the valid ones",
    )


# ---------------------------------------------------------------------------------------
# Questions about a name
# ---------------------------------------------------------------------------------------


def _identify(accelerator: str | AcceleratorSpec) -> tuple[str, str, str]:
    """``(vendor, canonical name, family)`` as far as anything can tell; blanks if unknown."""
    if isinstance(accelerator, AcceleratorSpec):
        name, vendor = accelerator.name, accelerator.vendor
        definition = _builtin_catalog().find(name)
        family = (definition.family or "") if definition is not None else ""
        return vendor or _vendor_from_shape(name), name, family
    if not isinstance(accelerator, str) or not accelerator.strip():
        return "", "", ""
    try:
        _, base = _split_count(accelerator)
    except ConfigurationError:
        return "", accelerator, ""
    for catalog in (_builtin_catalog, _live_catalog):
        found = catalog()._split_name(base)
        if found is not None:
            definition = found[0]
            return definition.vendor, definition.name, definition.family or ""
    return _vendor_from_shape(base), base, ""


def is_nvidia(accelerator: str | AcceleratorSpec) -> bool:
    """Whether the accelerator is an NVIDIA GPU (CUDA images, ``nvidia-smi``, MIG setup)."""
    return _identify(accelerator)[0].upper() == "NVIDIA"


def is_amd(accelerator: str | AcceleratorSpec) -> bool:
    """Whether the accelerator is an AMD GPU (ROCm instead of CUDA)."""
    return _identify(accelerator)[0].upper() == "AMD"


def is_tpu(accelerator: str | AcceleratorSpec) -> bool:
    """Whether the accelerator is a Google TPU (JAX/XLA runtime, slice topology)."""
    vendor, name, family = _identify(accelerator)
    return family.upper() == "TPU" or (vendor.upper() == "GOOGLE" and bool(_TPU_NAME.match(name)))


def is_trainium(accelerator: str | AcceleratorSpec) -> bool:
    """Whether the accelerator is AWS Trainium (Neuron SDK); knows ``trn1``-style names too."""
    _, name, family = _identify(accelerator)
    return family.lower() == "trainium" or bool(_TRAINIUM_NAME.match(name))


def is_inferentia(accelerator: str | AcceleratorSpec) -> bool:
    """Whether the accelerator is AWS Inferentia (Neuron SDK); knows ``inf2``-style names too."""
    _, name, family = _identify(accelerator)
    return family.lower() == "inferentia" or bool(_INFERENTIA_NAME.match(name))


# ---------------------------------------------------------------------------------------
# Sizes and instance selection
# ---------------------------------------------------------------------------------------


def parse_memory_gb(text: str | float) -> float:
    """A memory size in GB (binary: 1GB = 1024MB) from ``"32GB"``, ``"512MB"``, ``"1.5TB"``,
    ``"32GiB"`` or a bare number of GB.

    GB and GiB are read the same because providers report machine memory in GiB and call
    it GB; treating them differently would make ``memory="16GB"`` miss a 16 GiB machine.
    """
    value: object = text  # checked at run time: callers pass whatever the user typed
    if isinstance(value, bool):
        raise ConfigurationError(
            "memory", f"expected a size, got {value!r}", 'Use a size like "32GB"'
        )
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        match = _MEMORY_SIZE.match(value)
        if match is None or (match["binary"] and not match["unit"]):
            raise ConfigurationError(
                "memory", f"cannot read {text!r} as a memory size", 'Use a size like "32GB"'
            )
        size = float(match["number"]) * _UNIT_IN_GB[match["unit"].lower()]
        if match["bytes"] and not match["unit"]:
            size = float(match["number"]) / 1024.0**3  # plain bytes: "512B"
    else:
        raise ConfigurationError(
            "memory", f"expected a size, got {type(value).__name__}", 'Use a size like "32GB"'
        )
    if not math.isfinite(size) or size <= 0:
        raise ConfigurationError(
            "memory", f"memory must be a positive size, got {text!r}", 'Use a size like "32GB"'
        )
    return size


def _offer_has(offer: Offer, spec: AcceleratorSpec, names: frozenset[str]) -> bool:
    if offer.accelerator is None or _key(offer.accelerator) not in names:
        return False
    if offer.accelerator_count < spec.count:
        return False
    wanted_memory = spec.memory_gb
    offered_memory = offer.accelerator_memory_gb
    # Providers report usable memory (79.6 for an 80GB card): allow a little slack.
    if (
        wanted_memory is not None
        and offered_memory is not None
        and not math.isclose(offered_memory, wanted_memory, rel_tol=0.05)
    ):
        return False
    offered_form = offer.extra.get("form_factor")
    return not (
        spec.form_factor is not None
        and offered_form is not None
        and offered_form.lower() != spec.form_factor.lower()
    )


def select_instance(
    available_instances: Sequence[Offer],
    accelerator: str | AcceleratorSpec | None = None,
    cpu: int | None = None,
    memory: str | float | None = None,
) -> Offer | None:
    """The smallest offer that satisfies every requirement, ``None`` when nothing does.

    Smallest means fewest accelerators, then fewest vCPUs, then least memory, then the
    lowest price, so a request never pays for hardware it did not ask for. Offers marked
    unavailable are skipped. Without ``accelerator`` any offer qualifies, and CPU-only
    machines rank first because they have no accelerators.
    """
    spec = None if accelerator is None else parse_accelerator(accelerator)
    min_memory = None if memory is None else parse_memory_gb(memory)
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or cpu <= 0):
        raise ConfigurationError(
            "cpu", f"cpu must be a positive whole number, got {cpu!r}", "Use cpu=4"
        )
    names: frozenset[str] = frozenset()
    if spec is not None:
        definition = _builtin_catalog().find(spec.name)
        spellings = definition.names if definition is not None else (spec.name,)
        names = frozenset(_key(n) for n in spellings)

    def fits(offer: Offer) -> bool:
        if not offer.available:
            return False
        if cpu is not None and offer.vcpus < cpu:
            return False
        if min_memory is not None and offer.memory_gb < min_memory:
            return False
        return spec is None or _offer_has(offer, spec, names)

    def size(offer: Offer) -> tuple[float, int, float, float, str, str, str]:
        price = offer.cheapest_price
        return (
            offer.accelerator_count,
            offer.vcpus,
            offer.memory_gb,
            math.inf if price is None else price,
            offer.provider,
            offer.instance_type,
            offer.region,
        )

    matching = [offer for offer in available_instances if fits(offer)]
    return min(matching, key=size) if matching else None
