"""Command-line options generated from the configuration's one table (:data:`OPTIONS`).

:func:`config_options` adds a command's rows of :data:`wsi_saliency.config.OPTIONS` as
``click`` options. Each option's type follows its field's annotation: a ``Literal``
becomes ``click.Choice`` of its values, ``bool`` a flag, ``int``/``float`` numbers; a
``str | int`` field (the target class) reads digits as an index, and an ``int |
Literal[...]`` field (``--workers``) takes a number or one of the words. Every option
defaults to "not given", so the YAML file and the dataclass defaults apply unless it is
used. :func:`option_overrides` turns the parsed values back into dotted keys for
:func:`wsi_saliency.config.build_config`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from wsi_saliency.config import OPTIONS, RunConfig, config_keys

__all__ = ["config_options", "option_overrides", "param_name"]

F = TypeVar("F", bound=Callable[..., Any])


def param_name(key: str) -> str:
    """The Python parameter an option's value is passed as (``tiling.overlap`` ->
    ``tiling__overlap``)."""
    return key.replace(".", "__")


def _field_hint(key: str) -> Any:
    section, name = key.split(".", 1)
    if name not in config_keys().get(section, ()):
        raise KeyError(f"OPTIONS names unknown configuration key {key!r}")
    cls = type(getattr(RunConfig(), section))
    return typing.get_type_hints(cls)[name]


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def _click_kwargs(hint: Any) -> dict[str, Any]:
    members = _members(hint)
    if len(members) == 1:
        only = members[0]
        if typing.get_origin(only) is typing.Literal:
            return {"type": click.Choice([str(a) for a in typing.get_args(only)])}
        if only is bool:
            return {"is_flag": True}
        if only in (int, float):
            return {"type": only}
    words = [a for m in members if typing.get_origin(m) is typing.Literal
             for a in typing.get_args(m)]
    if int in members and words and len(members) == 2:
        return {"type": _IntOrWord(tuple(str(w) for w in words))}
    return {"type": str}


class _IntOrWord(click.ParamType):
    """A whole number or one of a few words (``--workers 3`` / ``--workers auto``)."""

    name = "integer"

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = words
        self.name = "INTEGER|" + "|".join(w.upper() for w in words)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value in self.words:
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a whole number nor one of "
                      f"{', '.join(self.words)}", param, ctx)


def config_options(command: str) -> Callable[[F], F]:
    """Decorator adding the options of ``command`` from :data:`~wsi_saliency.config.OPTIONS`.

    Parameters
    ----------
    command
        ``"run"`` or ``"tiles"``.

    Returns
    -------
    callable
        A decorator; the command receives each value as ``param_name(key)`` (None when
        the option is not given).
    """
    rows = [o for o in OPTIONS if command in o.commands]

    def decorate(fn: F) -> F:
        for row in reversed(rows):
            decls = [row.flag] + ([row.short] if row.short else []) + [param_name(row.key)]
            fn = click.option(
                *decls,
                default=None,
                help=row.help,
                metavar=row.metavar,
                **_click_kwargs(_field_hint(row.key)),
            )(fn)
        return fn

    return decorate


def option_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted configuration keys of the options that were given.

    Parameters
    ----------
    values
        The command's keyword arguments (others are ignored).

    Returns
    -------
    dict
        ``{key: value}`` for every option of the table that is not None; a digit
        string for a ``str | int`` field becomes an int.
    """
    out: dict[str, Any] = {}
    for row in OPTIONS:
        value = values.get(param_name(row.key))
        if value is None:
            continue
        members = _members(_field_hint(row.key))
        if int in members and str in members and isinstance(value, str) and value.isdigit():
            value = int(value)
        out[row.key] = value
    return out


