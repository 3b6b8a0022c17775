"""Option values without pydantic, where typer's answer is known without it.

Typer (0.2x) coerces every option and argument through a pydantic ``TypeAdapter``, built the
first time the parameter is processed, even when the option was left unset. Importing pydantic
for that is a third of a command's start-up, and goldfleet's options are names, numbers,
flags and lists of sizes, whose coerced value is the value click already parsed.

:func:`install` swaps typer's builder of a parameter's coercion for one that defers the real
one until a value needs it: an unset value never does (typer's own ``coerce`` answers ``None``
or ``()`` before asking); a ``str`` for a ``str`` parameter, an ``int`` or plain decimal digits
for an ``int`` one and strings for a ``list[str]`` one are what pydantic would return. Every
other value goes to typer's own coercion, so its messages and edge cases stay typer's. If a
typer release changes these internals, ``install`` leaves typer as it is: correct, only slower
(tests/e2e/test_e2e_cli_startup.py would then say so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

_DIGITS = re.compile(r"0|[1-9][0-9]{0,17}")


def _plain(info: Any) -> bool:
    """No parser, bounds or clamping: typer's coercion is pydantic's plain one."""
    return all(getattr(info, k, None) in (None, False) for k in ("parser", "min", "max", "clamp"))


def _known(annotation: Any, value: Any) -> tuple[bool, Any]:
    """(True, what typer would return) when that is sure without pydantic, else (False, None)."""
    if annotation is str and type(value) is str:
        return True, value
    if annotation is int:
        if type(value) is int:
            return True, value
        if type(value) is str and _DIGITS.fullmatch(value):
            return True, int(value)
    if (
        get_origin(annotation) is list
        and get_args(annotation) == (str,)
        and isinstance(value, list | tuple)
        and all(type(v) is str for v in value)
    ):
        return True, list(value)
    return False, None


def install() -> bool:
    """Defer typer's pydantic coercion as described above; False if typer's internals differ."""
    try:
        from typer import core
        from typer._coercion import RuntimeParam, TypeDescriptor
    except ImportError:
        return False
    build = getattr(core, "build_runtime_param", None)
    if build is None or getattr(build, "_goldfleet", False):
        return build is not None

    @dataclass(frozen=True)
    class Deferred(RuntimeParam):
        descriptor: TypeDescriptor | None = None
        built: dict[str, Any] = field(default_factory=dict, compare=False)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.descriptor is not None and _plain(self.parameter_info):
                known, result = _known(self.annotation, value)
                if known:
                    return result
            if "real" not in self.built:
                self.built["real"] = build(self.descriptor)
            return self.built["real"]._coerce_value(value, param=param, ctx=ctx)

    def deferred(descriptor: Any) -> Any:
        if getattr(descriptor, "file_annotation", None) is not None:
            return build(descriptor)
        try:
            return Deferred(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                descriptor=descriptor,
            )
        except (AttributeError, TypeError):  # a typer whose runtime parameters look otherwise
            return build(descriptor)

    deferred._goldfleet = True  # type: ignore[attr-defined]
    core.build_runtime_param = deferred
    return True
