"""Settings: configuration fields that declare their own flag, help text and accepted values.

Every frozen configuration of the package (``SimilarityConfig``, ``DataConfig``,
``TrainConfig``, ...) declares each of its user-settable fields once, with :func:`setting`::

    temp: float = setting(3.0, "temperature of the pooling softmax", Bounds(0, low_open=True))

The command line (tvr/cli/flags.py) generates its flags, their help, their range checks and the
keys a recipe may set from these declarations, and the configuration checks the same bounds
when it is built (:func:`check_settings` in ``__post_init__``), so a flag check and a
configuration check cannot disagree. A field declared with a plain default is no flag; one
declared with the default :data:`REQUIRED` has none and is a required flag.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

SETTING = "tvr.setting"  # the dataclass field metadata key
REQUIRED = dataclasses.MISSING  # the default of a setting without one: a required flag


class SettingError(ValueError):
    """A configuration value outside what its setting accepts; names the flag."""

    def __init__(self, flag: str, problem: str):
        super().__init__(f"argument --{flag}: {problem}")
        self.flag, self.problem = flag, problem


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting accepts: an integer or a finite number between optional
    bounds (each included unless ``*_open``), or None when ``optional``."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        closed = not (self.low_open or self.high_open)
        if self.low is not None and self.high is not None:
            if self.integer and self.high - self.low == 1 and closed:
                return f"{self.low} or {self.high}"
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{self.low}, {self.high}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {self.high}"
        else:
            text = kind
        return text + (" (or unset)" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (self.integer and not isinstance(value, int)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Bounds:
    return Bounds(low, high, integer=True)


ANY_NUMBER = Bounds()
POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
FRACTION = Bounds(0, 1, high_open=True)  # a proportion or a dropout rate: 1 is excluded
SWITCH = integer(0, 1)


@dataclass(frozen=True)
class Setting:
    """What a field declares: its flag name (without ``--``), help text, accepted values."""

    flag: str
    help: str
    bounds: Optional[Bounds] = None
    choices: Optional[tuple[Any, ...]] = None
    kind: Optional[type] = None     # the flag's type when the default (None) does not say it
    group: Optional[str] = None     # help group, when not the configuration's own
    const: Any = None               # the value of the flag given without one (if it may be)

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not accepted, or None."""
        if self.bounds is not None and not self.bounds.accepts(value):
            return f"must be {self.bounds}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return (f"invalid choice: {value!r} (choose from "
                    f"{', '.join(map(repr, self.choices))})")
        return None


def setting(default: Any, help: str, bounds: Optional[Bounds] = None, *,
            choices: Optional[Sequence[Any]] = None, flag: Optional[str] = None,
            kind: Optional[type] = None, group: Optional[str] = None, const: Any = None
            ) -> Any:
    """A dataclass field that is also a command-line flag (module docstring). ``flag`` is the
    flag's name when it is not the field's (the reference's names, e.g. ``psi_dropout``)."""
    meta = {SETTING: Setting(flag or "", help, bounds,
                             None if choices is None else tuple(choices), kind, group, const)}
    return dataclasses.field(default=default, metadata=meta)


def settings_of(config_type: type) -> Iterator[tuple[dataclasses.Field, Setting]]:
    """The (field, setting) pairs of a configuration class, flags named."""
    for item in dataclasses.fields(config_type):
        declared = item.metadata.get(SETTING)
        if declared is not None:
            yield item, dataclasses.replace(declared, flag=declared.flag or item.name)


def check_settings(config: Any) -> None:
    """Raise :class:`SettingError` for the first field of ``config`` its setting refuses."""
    for item, declared in settings_of(type(config)):
        problem = declared.problem(getattr(config, item.name))
        if problem is not None:
            raise SettingError(declared.flag, problem)
