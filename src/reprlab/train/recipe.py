"""The recipe contract: every training command is a config dataclass and a run function, registered by name.

A recipe is

* a **config**: a dataclass decorated with :func:`recipe_config`, with ``output_dir``, its own fields and
  ``train: TrainConfig`` (the shared loop's settings, with the recipe's defaults from :func:`loop`);
  ``__post_init__`` validates and raises :class:`~reprlab.errors.ConfigError` naming the field;
* a **run function** ``run(config, callbacks=(), stop_after=None) -> Result``, where ``Result`` is a
  :class:`RecipeResult` (``output_dir``, ``model_dir``, ``steps``, ``metrics``, plus the recipe's own);
* one line that registers them under the command a user types::

      @recipe_config
      class ToyConfig(RecipeConfig):
          output_dir: str
          corpus: list[str] = option(help="text files")
          width: int = option(64, help="hidden size")
          train: TrainConfig = loop(lr=1e-3, max_steps=100)

          def __post_init__(self):
              check(self.width > 0, "width", f"must be positive, got {self.width}")

      @register("train toy", ToyConfig, help="a toy recipe")
      def run_toy(config: ToyConfig, callbacks=(), stop_after=None) -> RecipeResult:
          state = train(model, data, collate, loss_fn, config.loop_config("toy"), callbacks, stop_after=stop_after)
          ...

The CLI builds ``reprlab train toy --out DIR --corpus ... --width 64 --lr ...`` from the config alone
(see ``reprlab.cli.options``): simple fields become options, lists take several values, nested configs
are flattened (or prefixed, when their field says ``option(prefix="kd")``). ``stop_after`` ends the run
after that many steps of this call, as if killed, which is how every recipe's exact-resume test works.

For backward compatibility a recipe config also accepts the loop's fields flat
(``MLMConfig(..., max_steps=7, lr=1e-3)`` is ``MLMConfig(..., train=TrainConfig(max_steps=7, lr=1e-3))``
over the recipe's own loop defaults).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from reprlab.errors import ConfigError
from reprlab.train.loop import TrainConfig

MISSING = dataclasses.MISSING


# ----------------------------------------------------------------------------- field helpers


def option(default=MISSING, *, default_factory=MISSING, help: str = "", choices: Sequence | None = None,
           flag: str | None = None, aliases: Sequence[str] = (), cli: bool = True, prefix: str | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None):
    """A dataclass field with what the CLI needs: one-line ``help``, ``choices``, the ``flag`` (default
    ``--field-name``), old spellings in ``aliases``, ``cli=False`` to keep it off the command line, for
    a nested config the ``prefix`` of its options (None: flattened), and ``parse`` for a value that is
    typed as one string (e.g. ``"0:0,1:2"`` for a layer map)."""
    metadata = {"help": help}
    for key, value in (("choices", tuple(choices) if choices is not None else None), ("flag", flag),
                       ("prefix", prefix), ("metavar", metavar), ("parse", parse)):
        if value is not None:
            metadata[key] = value
    if aliases:
        metadata["aliases"] = tuple(aliases)
    if not cli:
        metadata["cli"] = False
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def loop(**defaults) -> Any:
    """The ``train: TrainConfig`` field of a recipe config, with the recipe's own loop defaults."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    return field(default_factory=functools.partial(TrainConfig, **defaults),
                 metadata={"help": "the training loop", "loop_defaults": defaults})


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise ``ConfigError(message, field=field_name)`` unless ``condition``."""
    if not condition:
        raise ConfigError(message, field=field_name)


def check_choice(value, choices: Sequence, field_name: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown value {value!r}; choose one of: {', '.join(map(str, choices))}", field=field_name)


# ----------------------------------------------------------------------------- configs


def _is_dataclass_type(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def config_class_of(hint):
    """The config class of a field typed ``Cfg`` or ``Cfg | None``; None for other types."""
    if _is_dataclass_type(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and _is_dataclass_type(args[0]):
            return args[0]
    return None


def from_dict(cls, data: dict, where: str = ""):
    """``cls(**data)`` with nested configs built from nested dicts; unknown keys are a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object for {cls.__name__}, got {type(data).__name__}", field=where or None)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}", field=where or None)
    values = {}
    for key, value in data.items():
        sub = config_class_of(hints[key])
        values[key] = from_dict(sub, value, f"{where}{key}.") if sub is not None and isinstance(value, dict) else value
    return cls(**values)


def to_dict(config) -> dict:
    """A JSON-ready dict of a config (tuples become lists; paths strings)."""
    def plain(x):
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, Path):
            return str(x)
        return x

    return plain(dataclasses.asdict(config))


class RecipeConfig:
    """Methods shared by recipe configs (a mixin; :func:`recipe_config` adds it)."""

    output_dir: str
    train: TrainConfig

    def loop_config(self, recipe: str, **extra) -> TrainConfig:  # for recipes with a ``train`` field
        """``self.train`` with ``output_dir`` filled in and the whole config recorded with the run."""
        from reprlab.train.checkpoint import field_defaults

        defaults = {k: v for k, v in field_defaults(type(self)).items() if not k.startswith("train.")}
        return dataclasses.replace(self.train, output_dir=str(self.output_dir),
                                   extra={**self.train.extra, "recipe": recipe, "config": self.to_dict(),
                                          "config_defaults": defaults, **extra})

    def to_dict(self) -> dict:
        d = to_dict(self)
        d.get("train", {}).pop("extra", None)
        return d

    @classmethod
    def from_dict(cls, data: dict):
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def recipe_config(cls):
    """``@dataclass`` for a recipe config (a :class:`RecipeConfig` subclass), accepting the flat loop fields.

    The loop's fields that the config does not define itself may be passed flat; they are applied
    over the recipe's loop defaults (or over ``train=`` when both are given).
    """
    if not issubclass(cls, RecipeConfig):
        raise TypeError(f"{cls.__name__}: a recipe config subclasses RecipeConfig")
    cls = dataclass(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    if "output_dir" not in own:
        raise TypeError(f"{cls.__name__}: a recipe config needs the field output_dir")
    # a recipe without a training loop (e.g. a greedy search) has no ``train`` and takes no loop fields
    flat_names = {f.name for f in dataclasses.fields(TrainConfig)} - own - {"output_dir", "extra"} if "train" in own \
        else set()
    init = cls.__init__

    nested: dict[str, type] = {}  # field -> its config class (the loop's TrainConfig, a curriculum, ...), on first use

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in flat_names}
        if not nested:
            hints = typing.get_type_hints(cls)
            nested.update((f.name, sub) for f in dataclasses.fields(cls) if (sub := config_class_of(hints[f.name])))
        for key, sub in nested.items():  # nested configs given as dicts (e.g. from to_dict) are built here
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = from_dict(sub, kwargs[key], f"{key}.")
        init(self, *args, **kwargs)
        if flat:
            self.train = dataclasses.replace(self.train, **flat)

    cls.__init__ = __init__
    return cls


# ----------------------------------------------------------------------------- results


@dataclass
class RecipeResult:
    """What every run function returns. ``model_dir`` is None when the run stopped early (``stop_after``),
    ``metrics`` the training loop's logged records (``metrics.jsonl``), oldest first."""

    output_dir: Path
    model_dir: Path | None
    steps: int
    metrics: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        losses = [m["loss"] for m in self.metrics if "loss" in m]
        return losses[-1] if losses else float("nan")

    def summary(self) -> str:
        """One line for the CLI's log."""
        where = f"model -> {self.model_dir}" if self.model_dir else f"stopped early; checkpoints in {self.output_dir}"
        return f"{self.steps} steps, final loss {self.final_loss:.4f}; {where}"

    def report(self) -> str | None:
        """What the CLI prints on standard output (a table of results), or None."""
        return None


def read_metrics(output_dir: str | Path, name: str = "metrics.jsonl") -> list[dict]:
    """The training loop's metric records of a run folder (one JSON object per logged step)."""
    path = Path(output_dir) / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_differences(config: RecipeConfig, output_dir: str | Path | None = None,
                    allowed: Sequence[str] = ()) -> list[str]:
    """The settings (dotted paths of the config, e.g. ``train.lr``, ``num_negatives``) in which the run in
    ``output_dir`` (default: the config's) was made differently from ``config``; [] when it is the same
    recipe. For reusing a finished run, e.g. a benchmark's ``--reuse``: a folder is reused only for the
    config that made it. Settings that do not change what is computed (``resume``, ``device``, logging and
    checkpoint cadence, ``output_dir``) are not compared. Raises ConfigError when the folder holds no
    readable ``train_config.json``."""
    from reprlab.train.checkpoint import BENIGN, field_defaults, leaves

    record = Path(output_dir if output_dir is not None else config.output_dir) / "train_config.json"
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))["extra"]["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{record}: no readable record of a recipe's run there ({exc})") from exc
    a, b, defaults = leaves(stored), leaves(config.to_dict()), field_defaults(type(config))
    # a field added to the code since the run was made, kept at its default, is no change
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k.rsplit(".", 1)[-1] not in BENIGN
                     and not (k not in a and k in defaults and b[k] == defaults[k]))
    return [k for k in changed if k not in allowed and k.rsplit(".", 1)[-1] not in allowed]


def finished(state) -> bool:
    """True when the loop ran to its last step (not stopped by ``stop_after``)."""
    return state.step >= state.total_steps


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Recipe:
    command: str  # what a user types after ``reprlab``: "train dpr", "distill ckd", ...
    config: type
    run: Callable[..., RecipeResult]
    help: str
    fixed: dict = field(default_factory=dict)  # config fields the command sets (e.g. method="ckd")
    hidden: tuple[str, ...] = ()  # config fields this command does not offer (e.g. SEED's options under kd)

    @property
    def group(self) -> str:
        return self.command.split()[0]

    @property
    def name(self) -> str:
        return self.command.split()[-1]

    def make_config(self, **values):
        return self.config(**{**values, **self.fixed})


RECIPES: dict[str, Recipe] = {}


def register(command: str, config: type, help: str, hidden: Sequence[str] = (), **fixed):
    """Register ``run`` (the decorated function) with its config class under ``command``; ``fixed`` config
    values are set by the command (not options), ``hidden`` fields are not offered by it."""
    if len(command.split()) != 2:
        raise ValueError(f"a recipe command is 'GROUP NAME', got {command!r}")
    if not (dataclasses.is_dataclass(config) and issubclass(config, RecipeConfig)):
        raise TypeError(f"{config!r} is not a @recipe_config dataclass")

    def decorate(run):
        if command in RECIPES and RECIPES[command].run is not run:
            raise ValueError(f"recipe {command!r} is registered twice")
        RECIPES[command] = Recipe(command, config, run, help, dict(fixed), tuple(hidden))
        return run

    return decorate
