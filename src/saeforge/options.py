"""Settings as frozen dataclasses that are the CLI: every option is a flag, a config-file key and a
keyword of the Python API, its `help` the help, its default the default `--help` shows, its bounds
what `validate()` checks. A setting is declared once, by the thing it belongs to (a command in
config.py, an architecture in its own file, resampling in resample.py); "derive it" is the
explicit value None, shown and written as `auto`.

A config may hold other configs (TrainConfig holds its architecture's): `options()` lists the
flat names users write — flags, file keys, spec keys, keywords — and `from_values` builds the
config from them. Precedence: defaults < `--config FILE` (TOML or JSON, same keys, dashes or
underscores) < explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

from saeforge.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

AUTO = "auto"


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        aliases: tuple[str, ...] = (), positional: bool = False) -> Any:
    """A dataclass field with its CLI help and the bounds `validate()` checks."""
    meta = dict(help=help, choices=choices, ge=ge, gt=gt, le=le, lt=lt, aliases=aliases, positional=positional)
    return field(default=default, metadata=meta)


def inherit(cls: type, name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """Field `name` of `cls` (help and bounds), with another default or help for this command."""
    f = next(f for f in fields(cls) if f.name == name)
    meta = dict(f.metadata) | ({"help": help} if help else {})
    return field(default=f.default if default is dataclasses.MISSING else default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def base_type(typ: Any) -> tuple[type, bool]:
    """(the value type, whether None — `auto` — is allowed) of a field's annotation; `tuple[str, ...]`
    (several values: a positional taking one or more) is `tuple`."""
    if get_origin(typ) in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        return args[0], True
    if get_origin(typ) is tuple:
        return tuple, False
    return typ, False


def show(v: Any) -> Any:
    return AUTO if v is None else v


def _within(v: float, m: Any) -> bool:
    return (math.isfinite(v) and (m["ge"] is None or v >= m["ge"]) and (m["gt"] is None or v > m["gt"])
            and (m["le"] is None or v <= m["le"]) and (m["lt"] is None or v < m["lt"]))


def _bounds(m: Any, real: bool) -> str:
    """A field's declared bounds in words: 'in [0, 1)', 'a finite number > 0', '>= 1'."""
    lo = ("[", m["ge"]) if m["ge"] is not None else ("(", m["gt"]) if m["gt"] is not None else None
    hi = ("]", m["le"]) if m["le"] is not None else (")", m["lt"]) if m["lt"] is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    words = "a finite number " if real else ""
    if lo:
        return f"{words}{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    return f"{words}{'<=' if hi[0] == ']' else '<'} {hi[1]:g}" if hi else "a finite number"


class Option(NamedTuple):
    """One flat setting: its field, value type, whether `auto` is allowed, the default this
    command shows, and the architectures it belongs to (empty: every run)."""

    field: dataclasses.Field
    type: type
    nullable: bool
    default: Any
    owners: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def help(self) -> str:
        text = self.field.metadata.get("help", "")
        return f"{', '.join(self.owners)}: {text}" if self.owners else text


def field_options(cls: type, defaults: dict[str, Any] | None = None) -> dict[str, Option]:
    """The options of `cls`'s own fields (fields holding another config are left to the class)."""
    hints = get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.metadata.get("help") is None:  # not a setting (a nested config, a resolved budget)
            continue
        typ, nullable = base_type(hints[f.name])
        out[f.name] = Option(f, typ, nullable, (defaults or {}).get(f.name, f.default))
    return out


def checked(name: str, value: Any, option: Option) -> Any:
    """`value` if it has the option's type (an int is taken for a float), else UserError naming the flag."""
    if option.nullable and value in (None, AUTO):
        return None
    typ = option.type
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is tuple:  # several strings (a list in a config file)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise UserError(f"{flag(name)} must be a list of strings, got {value!r} ({type(value).__name__})")
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        auto = " or auto" if option.nullable else ""
        raise UserError(f"{flag(name)} must be {typ.__name__}{auto}, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Config:
    """Bounds checking and the flat view shared by every config."""

    def validate(self) -> None:
        for f in fields(self):
            v, m = getattr(self, f.name), f.metadata
            if isinstance(v, Config):
                v.validate()
                continue
            if v is None or isinstance(v, bool) or not m or m.get("help") is None:
                continue
            name = flag(f.name)
            if m["choices"] and v not in m["choices"]:
                if len(m["choices"]) == 2:
                    raise UserError(f"{name} must be {' or '.join(m['choices'])}, got {v!r}")
                raise UserError(f"{name} {v!r} is unknown; choose one of {', '.join(m['choices'])}")
            if isinstance(v, (int, float)) and not _within(v, m):
                raise UserError(f"{name} must be {_bounds(m, isinstance(v, float))}, got {v}")

    @classmethod
    def options(cls) -> dict[str, Option]:
        """Every flat setting of this config: flags, file keys, API keywords."""
        return field_options(cls)

    @classmethod
    def typed(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Flat settings, each checked against its option's type; unknown names refused."""
        opts = cls.options()
        unknown = sorted(set(values) - set(opts))
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}")
        return {k: checked(k, v, opts[k]) for k, v in values.items()}

    @classmethod
    def from_values(cls, values: dict[str, Any]):
        """The config from flat settings (each checked by type)."""
        return cls(**cls.typed(values))

    def values(self) -> dict[str, Any]:
        """The flat settings (the inverse of `from_values`)."""
        return {name: getattr(self, name) for name in self.options()}

    def with_values(self, **changes: Any):
        """This config with some flat settings changed (rebuilt through `from_values`)."""
        return type(self).from_values(self.values() | changes)


# ---------------------------------------------------------------- flags and files
def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """One flag per option (a positional for `positional` fields); defaults are suppressed so that
    a config file's values are not overridden by them."""
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file with the same keys; flags override it")
    for o in cls.options().values():
        help_ = o.help
        if o.default not in ("", ()) and "default" not in help_:
            help_ += f" (default: {show(o.default)})"
        help_ = help_.replace("%", "%%")  # argparse formats help
        if o.field.metadata.get("positional") and o.type is tuple:
            parser.add_argument(o.name, nargs="*", default=argparse.SUPPRESS, help=help_)
        elif o.field.metadata.get("positional"):
            parser.add_argument(o.name, type=_typed(o.type, o.name, o.nullable), help=help_)
        elif o.type is bool:
            parser.add_argument(flag(o.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_)
        else:
            parser.add_argument(flag(o.name), *o.field.metadata.get("aliases", ()), dest=o.name,
                                type=_typed(o.type, flag(o.name), o.nullable), default=argparse.SUPPRESS,
                                metavar=o.name.upper(), help=help_)


def _typed(typ: type, name: str, nullable: bool):
    def convert(text: str):
        if nullable and text == AUTO:
            return None
        try:
            if typ is int:
                value = float(text)  # accept 1e5 for counts
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects {typ.__name__}{' or auto' if nullable else ''}, "
                                             f"got {text!r}") from None

    return convert


def read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file {path} does not exist")
    if not p.is_file():
        raise UserError(f"config file {path} is not a file")
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of keys")
    return {k.replace("-", "_"): v for k, v in data.items()}


def file_values(cls: type[Config], path: str) -> dict[str, Any]:
    """A config file's values, each checked against its option's type; old key names (aliases) accepted."""
    opts = cls.options()
    alias = {a.removeprefix("--").replace("-", "_"): o.name for o in opts.values()
             for a in o.field.metadata.get("aliases", ())}
    raw = {alias.get(k, k): v for k, v in read_config_file(path).items()}
    unknown = sorted(set(raw) - set(opts))
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    values = {}
    for k, v in raw.items():
        if k == "dictionaries" and isinstance(v, list) and all(isinstance(t, dict) for t in v):  # a list of tables
            v = "; ".join(", ".join(f"{kk}={vv}" for kk, vv in t.items()) for t in v)
        try:
            values[k] = checked(k, v, opts[k])
        except UserError:
            o = opts[k]
            raise UserError(f"config file {path}: {k} must be {o.type.__name__}, got {v!r}") from None
    return values


def build_config(cls: type[Config], args: argparse.Namespace):
    """defaults < config file < flags, then validate."""
    values = file_values(cls, args.config) if getattr(args, "config", None) else {}
    values |= {name: getattr(args, name) for name in cls.options() if hasattr(args, name)}
    cfg = cls.from_values(values)
    cfg.validate()
    return cfg
