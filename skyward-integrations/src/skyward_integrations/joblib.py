"""``sky.integrations.JoblibPool``, ``ScikitLearnPool``, ``joblib_backend``, ``sklearn_backend``.

A Skyward pool as a joblib backend: ``Parallel(n_jobs=-1)`` and scikit-learn's ``n_jobs=-1``
spread their tasks over every worker of every node. Nothing is registered globally: the
backend instance is activated with ``joblib.parallel_config`` for the ``with`` block only, so
two pools in two threads never see each other's backend.

joblib is imported only when a backend is made (``sky.integrations`` loads without it).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from skyward.errors import ConfigurationError, PluginNotInstalledError
from skyward.image import Image
from skyward.pool import ComputePool

if TYPE_CHECKING:
    from skyward_integrations._joblib_backend import SkywardBackend

__all__ = ["JoblibPool", "ScikitLearnPool", "joblib_backend", "sklearn_backend"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def _backend(pool: ComputePool) -> SkywardBackend:
    if not isinstance(pool, ComputePool):
        raise ConfigurationError(
            "pool", f"{pool!r} is not a ComputePool", "Pass the pool of a `with` block"
        )
    try:
        from skyward_integrations._joblib_backend import SkywardBackend
    except ImportError as error:
        raise PluginNotInstalledError(
            "joblib", f"joblib is not installed here ({error}): pip install joblib"
        ) from error
    return SkywardBackend(pool)


@contextlib.contextmanager
def joblib_backend(pool: ComputePool) -> Iterator[SkywardBackend]:
    """Inside the block, joblib's ``Parallel`` runs its tasks on ``pool``'s workers.

    ``n_jobs=-1`` (also the default when ``Parallel`` is given none) means every worker.
    The nodes need joblib (and whatever the tasks import) in their image.
    """
    from joblib import parallel_config

    backend = _backend(pool)
    with parallel_config(backend=backend):
        yield backend


@contextlib.contextmanager
def sklearn_backend(pool: ComputePool) -> Iterator[SkywardBackend]:
    """Inside the block, scikit-learn's ``n_jobs`` work (``GridSearchCV``,
    ``cross_val_score``, ...) runs on ``pool``'s workers. The nodes need scikit-learn."""
    with joblib_backend(pool) as backend:
        yield backend


def _requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement.strip())
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else ""


def _with_package(image: Image | None, package: str, version: str | None, field: str) -> Image:
    """``image`` plus ``package`` pinned to ``version`` (default: the client's own version,
    so the objects joblib pickles by reference mean the same on both sides). A package the
    image already lists is left as the user wrote it."""
    image = image if image is not None else Image()
    if any(_requirement_name(r) == package for r in image.pip):
        if version is not None:
            raise ConfigurationError(
                field,
                f"{package} is both in image.pip and pinned by {field}={version!r}",
                f"Give the version in one place only (drop it from image.pip or from {field})",
            )
        return image
    if version is None:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = None
    if version is not None and not isinstance(version, str):
        raise ConfigurationError(field, f"{version!r} is not a version string", 'Use e.g. "1.6.0"')
    pin = package if version is None else f"{package}=={version}"
    return attrs.evolve(image, pip=(*image.pip, pin))


class JoblibPool(ComputePool):
    """A :class:`~skyward.ComputePool` whose ``with`` block makes it joblib's backend.

    Takes every ``ComputePool`` parameter, plus ``joblib_version``: the joblib the nodes
    install (default: the client's own version, unless ``image.pip`` already names joblib).
    """

    def __init__(
        self,
        provider: Any,
        *,
        image: Image | None = None,
        joblib_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        image = _with_package(image, "joblib", joblib_version, "joblib_version")
        super().__init__(provider, image=image, **kwargs)
        self._backend_block: contextlib.ExitStack | None = None

    def __enter__(self) -> JoblibPool:
        super().__enter__()
        try:
            stack = contextlib.ExitStack()
            stack.enter_context(joblib_backend(self))
        except BaseException:
            super().__exit__(None, None, None)
            raise
        self._backend_block = stack
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._backend_block = self._backend_block, None
        try:
            if stack is not None:
                stack.close()
        finally:
            super().__exit__(*exc_info)


class ScikitLearnPool(JoblibPool):
    """A :class:`JoblibPool` for scikit-learn: the nodes install scikit-learn (default:
    the client's version; ``sklearn_version`` pins another), and ``n_jobs=-1`` in any
    estimator or model-selection tool uses every worker of the pool."""

    def __init__(
        self,
        provider: Any,
        *,
        image: Image | None = None,
        sklearn_version: str | None = None,
        joblib_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        image = _with_package(image, "scikit-learn", sklearn_version, "sklearn_version")
        super().__init__(provider, image=image, joblib_version=joblib_version, **kwargs)
