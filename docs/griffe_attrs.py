"""griffe extensions for the API reference (used only by ``mkdocs build``, see mkdocs.yml).

- :class:`AttrsInit`: attrs writes ``__init__`` at import time, so griffe's static
  analysis sees none for ``RetryPolicy``, ``RateLimit``, ``FakeMonicaServer`` and the
  like: the reference would show them without a signature and call every argument
  "required". It imports each such class and adds the signature attrs gave it.
- :class:`PlainRoles`: the docstrings use Sphinx roles (``:class:`RateLimit```), which
  Markdown would print as they are; they become code spans.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import attrs
from griffe import (
    Class,
    Expr,
    ExprCall,
    ExprKeyword,
    Extension,
    Function,
    Module,
    Object,
    Parameter,
    ParameterKind,
    Parameters,
    dynamic_import,
)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: ParameterKind.var_keyword,
}

#: Longer values (a mapping of fault weights, say) are shown by the name of their constant.
_LONGEST_SHOWN = 60


def _source_default(cls: Class, name: str) -> str | Expr | None:
    """The default as written in the class body, e.g. ``DEFAULT_MAX_ATTEMPTS``.

    The source spelling names the constant, where the runtime value would show its
    repr (a long mapping proxy, say).
    """
    member = cls.members.get(name)
    value = getattr(member, "value", None)
    if isinstance(value, ExprCall):  # attrs.field(default=...) or field(factory=...)
        for argument in value.arguments:
            if isinstance(argument, ExprKeyword) and argument.name == "default":
                return argument.value
            if isinstance(argument, ExprKeyword) and argument.name == "factory":
                return f"{argument.value}()"
        return None
    return value


def _default(cls: Class, name: str, value: object) -> str | Expr:
    """How to show a default: its value when short and plain, else its source."""
    if isinstance(value, frozenset):
        # Sorted: a set's own order is arbitrary.
        shown = f"frozenset({{{', '.join(repr(item) for item in sorted(value))}}})"
    else:
        shown = repr(value)
    plain = (type(None), bool, int, float, str, frozenset, tuple)
    if isinstance(value, plain) and len(shown) <= _LONGEST_SHOWN:
        return shown
    # attrs strips the underscore of private fields from argument names.
    return _source_default(cls, name) or _source_default(cls, f"_{name}") or shown


class AttrsInit(Extension):
    """Give attrs classes the ``__init__`` signature attrs generates at run time."""

    def on_class(self, *, cls: Class, **kwargs: Any) -> None:
        """Add ``__init__`` to *cls* when it is an attrs class without one in its source."""
        if "__init__" in cls.members:
            return
        try:
            runtime = dynamic_import(cls.path)
        except ImportError:
            return
        if not (inspect.isclass(runtime) and attrs.has(runtime)):
            return
        parameters = [Parameter("self", kind=ParameterKind.positional_or_keyword)]
        for name, param in inspect.signature(runtime.__init__).parameters.items():
            if name == "self":
                continue
            default: str | Expr | None = None
            if param.default is not inspect.Parameter.empty:
                default = _default(cls, name, param.default)
            member = cls.members.get(name)
            annotation = getattr(member, "annotation", None) or param.annotation
            if annotation is inspect.Parameter.empty:
                annotation = None
            elif not isinstance(annotation, str | Expr):
                annotation = inspect.formatannotation(annotation)
            parameters.append(
                Parameter(
                    name,
                    annotation=annotation,
                    kind=_KINDS[param.kind],
                    default=default,
                )
            )
        init = Function("__init__", parent=cls, parameters=Parameters(*parameters), returns="None")
        cls.set_member("__init__", init)


_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):`(~?)([^`]+)`")


def _plain_role(match: re.Match[str]) -> str:
    target = match.group(2)
    # "~a.b.C" shows as "C", as Sphinx does.
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _walk(obj: Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = _ROLE.sub(_plain_role, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)  # type: ignore[arg-type]


class PlainRoles(Extension):
    """Turn Sphinx roles in docstrings into Markdown code spans."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        """Rewrite the docstrings of every object of *pkg*."""
        _walk(pkg, set())
