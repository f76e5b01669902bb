"""The public API is exactly what ``monica_async.__all__`` lists, sorted and documented."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Any

import pytest

import monica_async

PUBLIC_API = {
    "ALLOWED_SCALES",
    "USE_CLIENT_DEFAULT",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdaptiveRateLimit",
    "AuthenticationError",
    "BadRequestError",
    "ClientStats",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "Limits",
    "MonicaClient",
    "MonicaError",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "RedisRateLimit",
    "RetryPolicy",
    "StorageError",
    "UnprocessableEntityError",
    "UpscaleResult",
    "__version__",
    "set_testing",
}

#: Dunder members that are public by convention.
PUBLIC_DUNDERS = {"__version__"}


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else."""
    if name.isupper() or (name.upper() == name and any(c.isalpha() for c in name)):
        return 0, name
    if name[0].isupper():
        return 1, name
    return 2, name


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists the public API, no more and no less."""
    assert PUBLIC_API == set(monica_async.__all__)


def test_all_has_no_duplicates() -> None:
    """Each name appears once."""
    assert len(set(monica_async.__all__)) == len(monica_async.__all__)


def test_all_is_sorted() -> None:
    """__all__ is sorted (constants, classes, functions; alphabetical within each)."""
    assert sorted(monica_async.__all__, key=_isort_key) == list(monica_async.__all__)


def test_every_public_member_is_exported() -> None:
    """Every public name the package defines is in __all__ (submodules aside)."""
    members = {
        name
        for name, value in vars(monica_async).items()
        if (not name.startswith("_") or name in PUBLIC_DUNDERS)
        and not isinstance(value, types.ModuleType)
    }
    assert set(monica_async.__all__) == members


def test_star_import_gives_the_public_api() -> None:
    """``from monica_async import *`` brings exactly __all__."""
    namespace: dict[str, Any] = {}
    exec("from monica_async import *", namespace)
    namespace.pop("__builtins__")
    assert PUBLIC_API == set(namespace)


@pytest.mark.parametrize("name", sorted(PUBLIC_API - PUBLIC_DUNDERS))
def test_public_name_is_documented(name: str) -> None:
    """Classes and functions carry a docstring of their own; constants a ``#:`` comment or a
    documented type; the public methods and properties of classes a docstring each."""
    value = getattr(monica_async, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert (value.__doc__ or "").strip(), f"{name} has no docstring"
        assert value.__module__.startswith("monica_async")
    else:
        assert _has_doc_comment(name) or (
            type(value).__module__.startswith("monica_async") and type(value).__doc__
        ), f"{name} is not documented"
    if inspect.isclass(value):
        for attr, member in vars(value).items():
            if attr.startswith("_"):
                continue
            target = member.fget if isinstance(member, property) else member
            target = getattr(target, "__func__", target)
            if inspect.isfunction(target):
                assert (target.__doc__ or "").strip(), f"{name}.{attr} has no docstring"


def _has_doc_comment(name: str) -> bool:
    """Whether a module of the package assigns *name* right under a ``#:`` comment."""
    package = Path(monica_async.__file__).parent
    pattern = re.compile(rf"^#:.*\n(?:#:.*\n)*{re.escape(name)}\b.*=", re.MULTILINE)
    return any(pattern.search(path.read_text("utf-8")) for path in package.glob("*.py"))


def test_package_has_a_docstring() -> None:
    """The package docstring shows how to start."""
    assert "MonicaClient" in (monica_async.__doc__ or "")


def test_version_is_a_string() -> None:
    """__version__ is a plain version string."""
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:\S*)", monica_async.__version__)


def test_package_is_typed() -> None:
    """py.typed ships with the package (PEP 561)."""
    assert (Path(monica_async.__file__).parent / "py.typed").is_file()
