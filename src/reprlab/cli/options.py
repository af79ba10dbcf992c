"""The one mechanism that turns a config dataclass into command-line options and back.

Every field of a config becomes an option, named by :func:`reprlab.train.recipe.option`'s metadata:

* the flag is ``--field-name`` (or the field's ``flag``; old spellings in ``aliases`` keep working);
* a nested config's fields are flattened into the parent's (``train.lr`` is ``--lr``), or prefixed when
  the nested field says ``option(prefix="kd")`` (``kd.score_weight`` is ``--kd-score-weight``), and they
  form an argument group titled by the nested field's help;
* ``bool`` fields are ``--x / --no-x``; ``int``, ``float`` and ``str`` (and ``X | None``) take one value;
  lists and tuples take several values, each of which may also be comma-separated; a field with a
  ``parse`` function takes one string and parses it;
* a field without a default is a required option; ``cli=False`` fields are not offered.

Each option's ``dest`` is the field's dotted path, so :func:`config_from_args` rebuilds the nested
config from the parsed namespace, and a :class:`~reprlab.errors.ConfigError` naming a field is shown
as the flag the user typed (:meth:`Options.flag_of`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

from reprlab.errors import ConfigError
from reprlab.train.recipe import config_class_of, from_dict

SIMPLE = (int, float, str)


def _unwrap_optional(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _item_type(hint):
    """(item type, True) for list/tuple/Sequence of a simple type; (None, False) otherwise."""
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence, typing.Sequence) or (origin is not None and getattr(origin, "__name__", "")
                                                               == "Sequence"):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if args else str
        if item in SIMPLE:
            return item, True
    return None, False


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _list_of(kind):
    def convert(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} values, got {text!r}") from None
    convert.__name__ = kind.__name__
    return convert


@dataclass
class Options:
    """The options of one config class on one parser: dotted path -> flag, for values and error messages."""

    cls: type
    flags: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def flag_of(self, name: str | None) -> str | None:
        """The flag of a field named by a ConfigError (``"lr"``, ``"train.lr"``, ``"kd.scale"``)."""
        if not name:
            return None
        name = name.rstrip(".")
        if name in self.flags:
            return self.flags[name]
        ends = [path for path in self.flags if path.endswith("." + name)]
        return self.flags[ends[0]] if len(ends) == 1 else None


def add_config_options(parser, cls, hidden: Sequence[str] = (), fixed: dict | None = None,
                       defaults: dict | None = None) -> Options:
    """Add an option for every field of ``cls`` (recursively) to ``parser``; see the module docstring.

    ``hidden`` names fields (dotted paths) not to offer, ``fixed`` the values the command sets itself,
    ``defaults`` overrides of the dataclass defaults (by dotted path)."""
    options = Options(cls, fixed=dict(fixed or {}))
    taken: dict[str, str] = {}
    _add_fields(parser, parser, cls, "", "", set(hidden) | set(options.fixed), defaults or {}, options, taken)
    return options


def _add_fields(parser, group, cls, path: str, flag_prefix: str, skip: set, defaults: dict, options: Options,
                taken: dict) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = path + f.name
        meta = f.metadata
        if dotted in skip or meta.get("cli", True) is False:
            continue
        sub = config_class_of(hints[f.name])
        if sub is not None:
            prefix = meta.get("prefix")
            title = meta.get("help") or f.name.replace("_", " ")
            sub_group = parser.add_argument_group(title)
            nested_defaults = {k[len(dotted) + 1:]: v for k, v in defaults.items() if k.startswith(dotted + ".")}
            default = _default_of(f)
            if default is not dataclasses.MISSING and default is not None:
                nested_defaults = {**dataclasses.asdict(default), **nested_defaults}
            _add_fields(parser, sub_group, sub, dotted + ".", flag_prefix + (prefix + "-" if prefix else ""),
                        skip, {f"{dotted}.{k}": v for k, v in nested_defaults.items()}, options, taken)
            continue
        default = defaults.get(dotted, _default_of(f))
        flag = meta.get("flag") or "--" + flag_prefix + f.name.replace("_", "-")
        if flag in taken:
            raise TypeError(f"{cls.__name__}.{f.name}: flag {flag} is already taken by {taken[flag]}; give the field "
                            "option(flag=...) or the nested config a prefix")
        taken[flag] = dotted
        options.flags[dotted] = flag
        _add_one(group, f, hints[f.name], dotted, [flag, *meta.get("aliases", ())], default)


def _add_one(group, f: dataclasses.Field, hint, dest: str, flags: list[str], default) -> None:
    meta = f.metadata
    help_ = meta.get("help", "")
    required = default is dataclasses.MISSING
    kw: dict[str, Any] = {"dest": dest, "metavar": meta.get("metavar") or flags[0][2:].upper().replace("-", "_")}
    if required:
        kw["required"] = True
    else:
        kw["default"] = default
    kind = _unwrap_optional(hint)
    item, is_list = _item_type(hint)
    item_choices = None
    if meta.get("parse"):
        kw["type"] = meta["parse"]
    elif kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
        kw.pop("metavar")
    elif is_list:  # choices are checked per item: a token may hold several, comma-separated
        kw.update(nargs="+", type=_list_of(item), action=_Extend)
        item_choices = meta.get("choices")
    elif kind in SIMPLE:
        kw["type"] = kind
    else:
        return  # a type the command line cannot express (set it in Python or a config file)
    if meta.get("choices") and item_choices is None:
        kw["choices"] = meta["choices"]
        kw.pop("metavar", None)  # argparse shows {a,b,c}
    shown = "required" if required else None if (default is None and "default" in help_) else \
        f"default: {_show(default)}"
    kw["help"] = " ".join(x for x in (help_, f"({shown})" if shown else "") if x)
    action = group.add_argument(*flags, **kw)
    if item_choices:
        action.item_choices = tuple(item_choices)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


class _Extend(argparse.Action):
    """``--x a b,c`` -> [a, b, c]: every value may itself be comma-separated (the older spelling)."""

    item_choices: tuple | None = None

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v for chunk in values for v in chunk]
        bad = [v for v in items if self.item_choices and v not in self.item_choices]
        if bad:
            parser.error(f"argument {option_string}: invalid choice {bad[0]!r} (choose from "
                         f"{', '.join(map(str, self.item_choices))})")
        setattr(namespace, self.dest, items)


def config_from_args(options: Options, args: argparse.Namespace, **extra):
    """The config ``options.cls`` from the parsed options (dotted dests), the command's fixed values and
    ``extra`` values (top-level fields)."""
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest not in options.flags:
            continue
        node = values
        *parents, leaf = dest.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    values.update(options.fixed)
    values.update(extra)
    return from_dict(options.cls, values)


def explain(options: Options | None, exc: ConfigError) -> str:
    """A ConfigError's message with the field shown as its flag (``--lr: must be a positive number``)."""
    flag = options.flag_of(exc.field) if options is not None else None
    if flag:
        return f"{flag}: {exc.detail}"
    return str(exc)


def argv_of(options: Options, config) -> list[str]:
    """The command-line options that give ``config`` (the inverse of :func:`config_from_args`), e.g. to
    print the command that reproduces a run."""
    argv: list[str] = []
    for dest, flag in options.flags.items():
        value, owner = config, None
        for part in dest.split("."):
            owner, value = value, getattr(value, part)
        field_ = next(f for f in dataclasses.fields(owner) if f.name == dest.rsplit(".", 1)[-1])
        if field_.metadata.get("parse"):
            text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, (list, tuple)) \
                else str(value)
            argv += [flag, text]
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            if value:
                argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
