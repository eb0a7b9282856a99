"""Configuration: one typed schema per registered component, composed with Hydra, checked before any work.

Every registered space, strategy, evaluator and dataset loader gets a dataclass derived from its
constructor signature: the annotations are the types, the defaults the only defaults (nothing is
repeated in YAML). The dataclasses live in Hydra's ConfigStore, one group per kind, so
``space=mbv3`` selects the mbv3 schema for ``space.*``, ``strategy=danas`` the danas schema for
``search.*``, ``data=cifar10`` the loader's for ``data.*`` and ``evaluator=classification`` the
evaluator's for ``train.*`` (an evaluator that trains, i.e. takes ``epochs``) or ``evaluator.*``
(one that does not: ``evaluator.proxy``, ``evaluator.table``). OmegaConf checks the types; the
components' constructors check ranges when the builders below call them, which the pipeline does
before it loads data or creates a run folder: a setting a constructor refuses (``SettingError``)
exits 2 naming the component, any other exception is a bug and keeps its traceback.

Budgets (``conf/budget/*.yaml``) are presets, not schemas: ``budget=smoke`` sets the keys it names
that the chosen components have (``search.epochs`` means nothing to ``strategy=evolution`` and is
skipped), and the user's own ``key=value`` overrides win over it.

Every mistake a user can make on the command line ends as a ``UserError`` whose message says what
was wrong and what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import re
import types
import typing
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from hydra import compose as hydra_compose
from hydra import initialize
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .bench.settings import BenchConfig, check_bench
from .core.errors import SettingError, UserError
from .core.recipe import RecipeRanges
from .core.registry import unused_settings

if typing.TYPE_CHECKING:
    from .core.data import ImageData
    from .core.registry import Registry

CONF_DIR = Path(__file__).parent / "conf"
_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UNSET = object()


# --- the schemas ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    """One component kind: its config group, registry, and the constructor arguments the run supplies itself."""

    group: str
    where: str  # "module:NAME" of the registry, imported on first use (the dashboard needs none of them)
    supplied: frozenset[str]  # not user settings: taken from the top-level keys or from the data

    @property
    def registry(self) -> Registry:
        module, name = self.where.split(":")
        return getattr(importlib.import_module(module), name)

    def section(self, name: str) -> str:
        """Where the settings of component ``name`` live (``search`` for strategies, ``train`` for trainers, ...)."""
        if self.group == "strategy":
            return "search"
        if self.group == "evaluator":  # an evaluator that trains networks keeps today's train.* names
            return "train" if "epochs" in parameters(self.registry.get(name)) else "evaluator"
        return self.group


# A space is sized for the data; these settings exist for ``xsearch flops space=NAME`` (no data) and
# default to null, meaning "from the data", or the space's own default when there is no data.
SIZED_BY_DATA = ("num_classes", "in_chans", "image_size")

KINDS = {
    "space": Kind("space", "xsearch.search_spaces:SPACES", frozenset()),
    "strategy": Kind("strategy", "xsearch.strategies:STRATEGIES",
                     frozenset({"seed", "device", "show_progress", "launcher", "recipe_ranges"})),
    "data": Kind("data", "xsearch.datasets:DATASETS", frozenset()),
    "evaluator": Kind("evaluator", "xsearch.evaluators:EVALUATORS", frozenset({"device", "show_progress"})),
}
GROUPS = tuple(KINDS)  # the config groups: space=NAME, strategy=NAME, data=NAME, evaluator=NAME


def parameters(factory: Any) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``factory``, following ``**kwargs`` up a class's bases (first default wins)."""
    functions = ([klass.__init__ for klass in factory.__mro__ if "__init__" in vars(klass)]
                 if inspect.isclass(factory) else [factory])
    found: dict[str, inspect.Parameter] = {}
    unused = unused_settings(factory)
    for function in functions:
        hints = typing.get_type_hints(function)
        params = list(inspect.signature(function).parameters.values())
        for p in params:
            if (p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in found
                    and p.name not in unused):
                found[p.name] = p.replace(annotation=hints.get(p.name, Any))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def _config_type(hint: Any) -> Any:
    """The OmegaConf-supported type for a constructor annotation (``int | None`` -> int | None, Sequence -> List)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        base = _config_type(inner[0]) if len(inner) == 1 else Any
        return base | None if type(None) in args else base
    if origin is not None and isinstance(origin, type) and issubclass(origin, typing.Sequence) and origin is not str:
        return list[_config_type(args[0]) if args else Any]  # type: ignore[misc]
    return hint if hint in (int, float, str, bool) else Any


def _field(param: inspect.Parameter, sized_by_data: bool = False) -> tuple[str, Any, Any]:
    if sized_by_data:
        return param.name, int | None, dataclasses.field(default=None)
    default = param.default
    if default is inspect.Parameter.empty:
        spec: Any = dataclasses.field(default=dataclasses.MISSING)
    elif isinstance(default, (list, tuple)):
        spec = dataclasses.field(default_factory=lambda value=list(default): list(value))
    else:
        spec = dataclasses.field(default=default)
    return param.name, _config_type(param.annotation), spec


@cache
def schema(group: str, name: str, named: bool = False) -> type:
    """The dataclass of component ``name``'s settings: its constructor's keyword arguments (``named``: and ``name``)."""
    kind = KINDS[group]
    params = [p for p in parameters(kind.registry.get(name)).values() if p.name not in kind.supplied]
    fields = [("name", str, dataclasses.field(default=name))] if named else []
    return dataclasses.make_dataclass(
        f"{group}_{name}", fields + [_field(p, group == "space" and p.name in SIZED_BY_DATA) for p in params])


def settings(group: str, name: str) -> dict[str, Any]:
    """Component ``name``'s settings and their defaults (what ``xsearch list`` shows)."""
    return OmegaConf.to_container(OmegaConf.structured(schema(group, name)))  # type: ignore[return-value]


@dataclasses.dataclass
class ConstraintsConfig:
    flops: Any = None  # hard limit on the found network's MACs: 5M, 300K, 1.2G or an integer
    latency: Any = None  # hard limit on its predicted latency: 3ms, 500us, 0.002s or a number of milliseconds


@dataclasses.dataclass
class LatencyConfig:
    """Latency tables (``latency.*``; ``xsearch latency table`` takes them without the prefix too)."""

    table: str | None = None  # a table made by `xsearch latency table`; null = <runs_root>/latency/, built if missing
    runtime: str = "onnxruntime"  # onnxruntime | torch: what the network will run on
    batch: int = 1  # images per call
    threads: int = 1  # the runtime's intra-op threads
    warmup: int = 10  # calls before timing
    repeats: int = 25  # rounds: each times every module and network once, shuffled (the median over rounds is the time)
    calibrate: int = 10  # random networks timed whole to fit the correction of the per-layer sum
    networks: int = 30  # random networks (other seeds, never in the fit) timed whole to check the prediction


@dataclasses.dataclass
class RayConfig:
    """``launcher=ray``: where the trials run and what each one gets (``ray.*``)."""

    address: str | None = None  # null = start a local Ray; "auto" or "ray://HOST:10001" joins a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # trials at once; null = as many as the resources allow


LAUNCHERS = ("local", "ray")


DEFAULT_CHOICES = {"space": "mbv3", "strategy": "danas", "data": "fashion_mnist", "evaluator": "classification"}


@dataclasses.dataclass
class RunConfig:
    """``xsearch run`` / ``train`` / ``flops`` / ``bench``: the top-level keys; the groups fill the sections."""

    defaults: list[Any] = dataclasses.field(default_factory=lambda: ["_self_", *({g: o} for g, o in
                                                                                  DEFAULT_CHOICES.items())])
    space: Any = None
    strategy: Any = None
    search: Any = None
    data: Any = None
    evaluator: Any = None
    train: Any = None
    budget: str = "demo"  # a preset of run lengths: conf/budget/NAME.yaml
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    storage: str | None = None  # any Optuna storage URL; null = sqlite:///<runs_root>/xsearch.db
    runs_root: str = "runs"
    run_dir: str | None = None  # null = <runs_root>/<time>-<space>-<strategy>
    progress: bool = True
    constraints: ConstraintsConfig = dataclasses.field(default_factory=ConstraintsConfig)
    study: str | None = None  # Optuna study name; workers started with the same study and storage share a search
    heartbeat: int = 30  # study=NAME: seconds between a worker's heartbeats; a claim silent 4x as long is freed
    launcher: str = "local"  # local (in this process) | ray (each evaluation a Ray Tune trial)
    retrain_top: int = 0  # after the search retrain its k best distinct networks (launcher trials); 0: the answer only
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    out: str | None = None  # xsearch bench: where to write (or, for throughput, read) the JSON rows
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    latency: LatencyConfig = dataclasses.field(default_factory=LatencyConfig)
    recipe: str | None = None  # a recipe.yaml (xsearch tune): its train.* values, below your own train.*=, above budget=
    tune: RecipeRanges = dataclasses.field(default_factory=RecipeRanges)  # xsearch tune, search.tune_recipe: ranges


@dataclasses.dataclass
class DashboardConfig:
    """``xsearch dashboard``: the Optuna dashboard's storage and address."""

    storage: str | None = None  # Optuna storage URL or SQLite file; null = runs/xsearch.db
    port: int = 8080
    host: str = "127.0.0.1"
    artifacts: str | None = None  # the runs' plots; null = artifacts/ beside the SQLite file, else runs/artifacts


PRIMARY = {"run": RunConfig, "dashboard": DashboardConfig}


def _group_node(group: str, name: str) -> dict[str, Any]:
    """What ``group=name`` puts into the configuration (a package-global node)."""
    section = KINDS[group].section(name)
    if section != group:  # strategy -> search.*, a training evaluator -> train.*
        return {group: {"name": name}, section: OmegaConf.structured(schema(group, name))}
    return {group: OmegaConf.structured(schema(group, name, named=True)), **({"train": {}} if group == "evaluator" else {})}


@cache
def _register(config: str) -> None:
    store = ConfigStore.instance()
    store.store(name=config, node=PRIMARY[config])
    if config != "run":
        return
    for group, kind in KINDS.items():
        for name in kind.registry.names():
            store.store(group=group, name=name, node=_group_node(group, name), package="_global_")


# --- composing -----------------------------------------------------------------------------
def group_options(group: str) -> list[str]:
    """The valid options of a group: the registry's names (and the budget presets' file names)."""
    if group == "budget":
        return sorted(p.stem for p in (CONF_DIR / "budget").glob("*.yaml"))
    return KINDS[group].registry.names()


def load_budget(name: str) -> dict[str, dict[str, Any]]:
    """Budget preset ``name``: {section: {key: value}}."""
    return yaml.safe_load((CONF_DIR / "budget" / f"{name}.yaml").read_text()) or {}


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _split(item: str) -> tuple[str, str]:
    """(key, value) of ``key=value``; Hydra's ``+key``/``++key`` (add a key) read as ``key``: every key has a schema."""
    if "=" not in item:
        raise UserError(f"argument {item!r} is not an option; write key=value (e.g. seed=1) or group=option "
                        f"(e.g. space=mbv3); groups: {', '.join(GROUPS)}")
    key, value = item.split("=", 1)
    key = key.removeprefix("++") if key.startswith("++") else key.removeprefix("+")
    if not _KEY.fullmatch(key):
        hint = " (xsearch options have no dashes: write port=8080, not --port 8080)" if key.startswith("-") else ""
        raise UserError(f"{key!r} in {item!r} is not an option name; write key=value with a dotted name such as "
                        f"search.epochs=6{hint}")
    return key, value


def compose(overrides: list[str], config: str = "run") -> DictConfig:
    """The typed configuration for ``overrides`` (Hydra grammar: key=value, group=option), or a UserError.

    ``config`` is ``run`` (every command that searches, trains or counts) or ``dashboard``.
    """
    _register(config)
    keys = [_split(item) for item in overrides]
    overrides = [f"{key}={value}" for key, value in keys]
    choices = {g: o for g, o in DEFAULT_CHOICES.items()} if config == "run" else {}
    for key, value in keys:
        if config == "run" and key in (*GROUPS, "budget"):
            if value not in group_options(key):
                raise UserError(f"unknown {key} {value!r}; valid {key} options: {', '.join(group_options(key))}.")
            choices[key] = value
    base = _defaults(config, tuple(sorted(choices.items())))
    for key, _ in keys:
        if key not in choices or config != "run":
            _check_key(base, key, choices)
    explicit = {key for key, _ in keys}
    recipe = dict(keys).get("recipe") if config == "run" else None
    from_recipe = recipe_overrides(recipe, base, choices, explicit) if recipe not in (None, "", "null") else []
    try:
        cfg = _hydra(config, from_recipe + overrides, base)
    except UserError as exc:  # a recipe value of the wrong type: say where it came from
        if any(str(exc).startswith(item + " ") for item in from_recipe):
            raise UserError(f"recipe={recipe}: {exc}") from None
        raise
    if config == "run":
        _apply_budget(cfg, explicit | {item.split("=", 1)[0] for item in from_recipe})
    return cfg


# --- recipe files ---------------------------------------------------------------------------
RECIPE_HEADER = """\
# xsearch training recipe: train.* settings, written by `xsearch tune` (or a run with search.tune_recipe=true).
# Use it with `xsearch train ARCH_JSON recipe=THIS_FILE` or `xsearch run ... recipe=THIS_FILE`; your own
# train.KEY=VALUE on the command line wins over it, and it wins over budget= presets. `about` is not read.
"""


def load_recipe(path: str) -> dict[str, Any]:
    """The ``train.*`` settings of recipe file ``path`` as ``{key: value}``, or a UserError saying what is wrong.

    A recipe is YAML: a ``train:`` mapping of settings (``lr: 0.1``), or top-level ``train.KEY: value``
    keys, and optionally ``about:`` (what made it; not read). ``recipe=FILE`` checks the keys and
    types exactly as ``train.KEY=VALUE`` on the command line (``compose``).
    """
    fix = "pass a recipe.yaml written by 'xsearch tune' (a mapping with train: {lr: 0.1, ...})"
    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe={path}: no such file; {fix}")
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"recipe={path} is not readable YAML ({first}); {fix}") from None
    if not isinstance(doc, dict):
        raise UserError(f"recipe={path} holds {'nothing' if doc is None else 'a ' + type(doc).__name__}, not a "
                        f"mapping of train.* settings; {fix}")
    settings = {}
    for key, value in doc.items():
        if key == "about":
            continue
        if key == "train" and isinstance(value, dict):
            settings.update({str(k): v for k, v in value.items()})
        elif isinstance(key, str) and key.startswith("train.") and key.count(".") == 1:
            settings[key[len("train."):]] = value
        else:
            raise UserError(f"recipe={path}: {key!r} is not part of a recipe, which holds train.* settings only "
                            f"(and about:); {fix}")
    if not settings:
        raise UserError(f"recipe={path} holds no train.* settings; {fix}")
    return settings


def _override_value(value: Any) -> str:
    """``value`` (from YAML) as Hydra override text, so it is typed exactly as the same text on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(type(value).__name__)


def recipe_overrides(path: str, base: DictConfig, choices: dict[str, str], explicit: set[str]) -> list[str]:
    """``train.KEY=VALUE`` overrides of recipe file ``path`` that the command line does not set itself."""
    items = []
    for key, value in load_recipe(path).items():
        name = f"train.{key}"
        try:
            _check_key(base, name, choices)
            text = _override_value(value)
        except UserError as exc:
            raise UserError(f"recipe={path}: {exc}") from None
        except TypeError:
            raise UserError(f"recipe={path}: {name} is {value!r}, not one value; write it as on the command "
                            "line (a number, a word, true/false or null)") from None
        if name not in explicit:
            items.append(f"{name}={text}")
    return items


def _blame_recipe(cfg: dict[str, Any], exc: UserError) -> UserError:
    """``exc``, naming the recipe file when the ``train.*`` value it refuses came from ``recipe=FILE``."""
    path = cfg.get("recipe")
    if path in (None, "", "null"):
        return exc
    train = cfg.get("train") or {}
    from_file = [k for k, v in load_recipe(path).items() if re.search(rf"\b{k}\b", str(exc)) and train.get(k) == v]
    return UserError(f"recipe={path}: {exc}") if from_file else exc


def write_recipe(path: str | Path, recipe: dict[str, Any], **about: Any) -> Path:
    """Write ``recipe`` (``{train key: value}``) as a recipe file that ``recipe=FILE`` reads; ``about``: what made it."""
    from .core.io import write_text

    doc = {"about": about, "train": dict(recipe)} if about else {"train": dict(recipe)}
    write_text(path, RECIPE_HEADER + yaml.safe_dump(doc, sort_keys=False))
    return Path(path)


def compose_defaults(choices: dict[str, str] | None = None) -> DictConfig:
    """The configuration with only group choices applied (``{"strategy": "evolution"}``): what every key defaults to."""
    _register("run")
    merged = {**DEFAULT_CHOICES, **(choices or {})}
    return copy.deepcopy(_defaults("run", tuple(sorted(merged.items()))))


@lru_cache(maxsize=64)
def _defaults(config: str, choices: tuple[tuple[str, str], ...]) -> DictConfig:
    return _hydra(config, [f"{g}={o}" for g, o in choices])


def _hydra(config: str, overrides: list[str], base: DictConfig | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize(config_path=None, version_base=None):  # structured configs only: conf/ holds presets
            return hydra_compose(config, overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:  # rewritten for the user
        raise UserError(_explain(exc, overrides, base)) from None
    finally:
        GlobalHydra.instance().clear()


def _owner(section: str, choices: dict[str, str]) -> str:
    """Who owns the settings under ``section``: e.g. "strategy 'evolution'"."""
    for group, kind in KINDS.items():
        if group in choices and kind.section(choices[group]) == section:
            return f"{group} {choices[group]!r}"
    return ""


def _check_key(base: DictConfig, key: str, choices: dict[str, str]) -> None:
    """Refuse a key the configuration does not have, naming the valid keys where it was looked for."""
    parent, _, leaf = key.rpartition(".")
    if parent in GROUPS and leaf == "name":
        raise UserError(f"choose the {parent} with {parent}=NAME, not {key}=; valid: {', '.join(group_options(parent))}")
    node = OmegaConf.select(base, parent) if parent else base
    if isinstance(node, DictConfig) and leaf in node and not isinstance(node[leaf], DictConfig):
        return
    if isinstance(node, DictConfig) and leaf in node:
        valid = sorted(f"{key}.{k}" for k in node[leaf])
        raise UserError(f"{key!r} is a section, not a setting; set its keys one by one: {', '.join(valid)}")
    if not isinstance(node, DictConfig):
        top = [k for k in base if k != "defaults"]
        raise UserError(f"unknown configuration key {key!r}; valid keys at the top level: {', '.join(top)}; "
                        f"groups: {', '.join(g for g in (*GROUPS, 'budget') if g in base)}.")
    valid = ", ".join(sorted(str(k) for k in node if k != "name")) or "(none)"
    where = f"under '{parent}'" if parent else "at the top level"
    owner = _owner(parent, choices)
    if parent == "train" and not len(node) and "evaluator" in choices:
        own = ", ".join(f"evaluator.{k}" for k in base.evaluator if k != "name") or "none"
        raise UserError(f"unknown configuration key {key!r}: evaluator {choices['evaluator']!r} trains nothing, so it "
                        f"has no train.* settings; its settings: {own}. Pick a training evaluator with "
                        f"evaluator=classification")
    raise UserError(f"unknown configuration key {key!r}" + (f": {owner} has no such setting" if owner else "")
                    + f"; valid keys {where}: {valid}. List options with 'xsearch list'.")


def _explain(exc: Exception, overrides: list[str], base: DictConfig | None = None) -> str:
    """One line for a Hydra/OmegaConf error: the option at fault, what went wrong, and the key's default."""
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    m = re.search(r"full_key: (\S+)", text)
    if not m:
        return f"invalid options {' '.join(overrides)}: {first}"
    key = re.sub(r"\[\d+\]$", "", m.group(1))
    given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
    default = OmegaConf.select(base, key, default=_UNSET) if base is not None else _UNSET
    if isinstance(default, (DictConfig, ListConfig)):
        default = OmegaConf.to_container(default)
    hint = "" if default is _UNSET else f"; {key} defaults to {default!r}"
    return f"{given} is not valid: {first}{hint}"


def _apply_budget(cfg: DictConfig, explicit: set[str]) -> None:
    """Set the budget preset's keys that the chosen components have and the user did not set."""
    for section, values in load_budget(cfg.budget).items():
        node = cfg.get(section)
        for key, value in (values or {}).items():
            if isinstance(node, DictConfig) and key in node and f"{section}.{key}" not in explicit:
                node[key] = value


# --- checking ------------------------------------------------------------------------------
def parse_count(value: Any, what: str = "constraints.flops") -> int | None:
    """'5M' -> 5_000_000, '300K', '1.2G', 1200 -> int; None stays None."""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
        return None
    if isinstance(value, bool):
        raise UserError(f"{what}={value!r} is not a number; write e.g. 5M, 300K, 1.2G or 5000000")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(value))
        if not m:
            raise UserError(f"{what}={value!r} is not a number; write e.g. 5M, 300K, 1.2G or 5000000")
        number = float(m.group(1)) * _SUFFIX.get(m.group(2).upper(), 1)
    if not math.isfinite(number) or number <= 0 or number >= 2 ** 63:
        raise UserError(f"{what} must be positive (a finite number of MACs), got {value!r}")
    return round(number)


_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3, "": 1.0}


def parse_latency(value: Any, what: str = "constraints.latency") -> float | None:
    """'3ms' -> 3.0, '500us' -> 0.5, '0.002s' -> 2.0, 3 -> 3.0 (milliseconds); None stays None."""
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
        return None
    hint = "write e.g. 3ms, 500us, 0.002s or 3 (milliseconds)"
    if isinstance(value, bool):
        raise UserError(f"{what}={value!r} is not a time; {hint}")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ms|us|µs|s|)\s*", str(value))
    if not m:
        raise UserError(f"{what}={value!r} is not a time; {hint}")
    ms = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if not math.isfinite(ms) or ms <= 0:
        raise UserError(f"{what} must be a positive time, got {value!r}; {hint}")
    return ms


RUNTIMES = ("onnxruntime", "torch")


def check_latency(settings: dict[str, Any]) -> None:
    """Refuse ``latency.*`` values no table can be built with."""
    if settings["runtime"] not in RUNTIMES:
        raise UserError(f"latency.runtime={settings['runtime']!r} is not valid; use {' or '.join(RUNTIMES)} "
                        "(onnxruntime runs the exported ONNX network, torch the PyTorch module)")
    for key, low in (("batch", 1), ("threads", 1), ("warmup", 0), ("repeats", 3), ("calibrate", 2), ("networks", 1)):
        if int(settings[key]) < low:
            raise UserError(f"latency.{key}={settings[key]} must be at least {low}")


# Ranges by setting name: a name means the same thing in every component that has it (``lr`` is a
# learning rate wherever it appears), so one table serves them all. What only one component knows
# (danas's class_fractions, evolution's sample_size <= population_size) its constructor checks.
AT_LEAST = {"parallel_queries": 1, "epochs": 1, "batch_size": 1, "train_samples": 1, "test_samples": 1, "val_samples": 1, "max_trials": 1,
            "population_size": 1, "sample_size": 1, "prescreen_factor": 1, "num_layers": 1, "num_blocks": 1, "derive_trials": 1,
            "warmup_epochs": 0, "n_startup_trials": 0, "recalibration_batches": 0, "temperature_epochs": 0,
            "weight_decay": 0, "arch_weight_decay": 0, "adamw_weight_decay": 0, "flops_weight": 0, "latency_weight": 0, "dropout": 0,
            "label_smoothing": 0, "image_size": 1, "channels": 1, "num_classes": 1, "in_chans": 1}
ABOVE = {"lr": 0, "arch_lr": 0, "adamw_lr": 0, "width_mult": 0, "backbone_width": 0, "keep_fraction": 0}
BELOW = {"dropout": 1, "label_smoothing": 1}
SETTING_SECTIONS = ("space", "search", "data", "train", "evaluator")


def check_ranges(plain: dict[str, Any]) -> None:
    """Refuse a component setting outside its range (see AT_LEAST, ABOVE, BELOW) or a float that is not finite."""
    for section in SETTING_SECTIONS:
        for key, value in (plain.get(section) or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = f"{section}.{key}={value!r}"
            if not math.isfinite(value):
                raise UserError(f"{name} must be a finite number")
            if key in AT_LEAST and value < AT_LEAST[key]:
                raise UserError(f"{name} must be at least {AT_LEAST[key]}")
            if key in ABOVE and value <= ABOVE[key]:
                raise UserError(f"{name} must be greater than {ABOVE[key]}")
            if key in BELOW and value >= BELOW[key]:
                raise UserError(f"{name} must be below {BELOW[key]}")


def validate(cfg: DictConfig) -> dict[str, Any]:
    """The composed configuration as a plain dict, with the checks types cannot express (ranges, FLOPs, device)."""
    try:
        plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore
    except OmegaConfBaseException as exc:  # a bad ${...} interpolation or a required value left unset
        raise UserError(_explain(exc, [])) from None
    plain.pop("defaults", None)
    try:
        check_ranges(plain)
    except UserError as exc:
        raise _blame_recipe(plain, exc) from None
    RecipeRanges(**(plain.get("tune") or {}))  # refuses ranges it cannot draw from (tune.*)
    plain["constraints"]["flops"] = parse_count(plain["constraints"].get("flops"))
    plain["constraints"]["latency"] = parse_latency(plain["constraints"].get("latency"))
    check_latency(plain["latency"])
    check_bench(plain.get("bench") or {})
    if int(plain.get("heartbeat") or 0) < 1:
        raise UserError(f"heartbeat={plain.get('heartbeat')} must be at least 1 (seconds between a shared-study "
                        "worker's heartbeats; the default is 30)")
    if int(plain.get("retrain_top") or 0) < 0:
        raise UserError(f"retrain_top={plain['retrain_top']} must be at least 0 (0: retrain only the search's answer)")
    if plain["launcher"] not in LAUNCHERS:
        raise UserError(f"launcher={plain['launcher']!r} is not valid; use {' or '.join(LAUNCHERS)} "
                        "(local runs every evaluation in this process, ray runs them as Ray Tune trials)")
    if plain["device"] not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={plain['device']!r} is not valid; use auto, cpu or cuda")
    if plain["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    return plain


# --- building the configured components ----------------------------------------------------
def settings_of(cfg: dict[str, Any], group: str) -> tuple[str, dict[str, Any]]:
    """(name, settings) of the configured component of ``group``, refusing settings it does not take."""
    name = cfg[group]["name"]
    kind = KINDS[group]
    section = kind.section(name)
    knobs = {k: v for k, v in (cfg.get(section) or {}).items() if not (section == group and k == "name")}
    valid = {f.name for f in dataclasses.fields(schema(group, name))}
    unknown = sorted(set(knobs) - valid)
    if unknown:
        raise UserError(f"{group} {name!r} has no setting {', '.join(f'{section}.{k}' for k in unknown)}; "
                        f"valid keys under '{section}': {', '.join(sorted(valid)) or '(none)'}")
    return name, knobs


def _construct(group: str, name: str, knobs: dict[str, Any]) -> Any:
    """Call component ``name`` of ``group`` with ``knobs``; a setting it refuses (``SettingError``) becomes a
    UserError naming it. Any other exception is a bug and keeps its traceback."""
    try:
        return KINDS[group].registry.get(name)(**knobs)
    except SettingError as exc:
        raise UserError(f"{group} {name!r}: {exc}") from None


def build_data(cfg: dict[str, Any]) -> ImageData:
    """The configured dataset, checked against the configured sample counts before any search or training."""
    name, knobs = settings_of(cfg, "data")
    wanted = KINDS["evaluator"].registry.get(cfg["evaluator"]["name"]).data_task
    if "task" in knobs and knobs["task"] is None and wanted is not None:
        knobs = {**knobs, "task": wanted}  # data=coco loads the annotations the evaluator needs
    data = _construct("data", name, knobs)
    check_sample_counts(cfg, data)
    return data


def build_space(cfg: dict[str, Any], data: ImageData | None):
    """The configured space, sized for ``data`` (or at the space's own defaults when there is no data)."""
    name, kwargs = settings_of(cfg, "space")
    from xsearch.search_spaces import get_space

    kwargs = {k: v for k, v in kwargs.items() if not (k in SIZED_BY_DATA and v is None)}
    if data is not None:
        c, h, _ = data.input_shape
        sized = dict(zip(SIZED_BY_DATA, (data.num_classes, c, h)))
        clash = [f"space.{k}={v} (data: {sized[k]})" for k, v in kwargs.items() if k in sized and v != sized[k]]
        if clash:
            raise UserError(f"{', '.join(clash)} does not fit data={data.name}; leave it unset (null): the space "
                            "is sized for the data")
        kwargs = {**kwargs, **sized}
    return get_space(name, **kwargs)


def _run_wide(group: str, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The top-level settings (seed, device, progress) that component ``name`` takes."""
    values = {"seed": cfg["seed"], "device": cfg["device"], "show_progress": cfg["progress"]}
    taken = parameters(KINDS[group].registry.get(name))
    return {k: v for k, v in values.items() if k in KINDS[group].supplied and k in taken}


def build_strategy(cfg: dict[str, Any], launcher: Any = None):
    """The configured strategy (``search.*`` settings; seed, device and progress from the top level).

    ``launcher`` (``build_launcher``) goes to strategies that take one: where their queries run.
    """
    name, knobs = settings_of(cfg, "strategy")
    if launcher is not None and "launcher" in parameters(KINDS["strategy"].registry.get(name)):
        knobs = {**knobs, "launcher": launcher}
    if "recipe_ranges" in parameters(KINDS["strategy"].registry.get(name)):  # search.tune_recipe draws from tune.*
        knobs = {**knobs, "recipe_ranges": RecipeRanges(**(cfg.get("tune") or {}))}
    return _construct("strategy", name, {**knobs, **_run_wide("strategy", name, cfg)})


def build_launcher(cfg: dict[str, Any], storage_path: str | Path | None = None):
    """Where evaluations run (``launcher=local|ray``, ``ray.*``), checked; ``connect()`` starts Ray (or a UserError).

    ``storage_path``: Ray Tune's trial folders (a run folder's ``ray/``).
    """
    from .core.launch import make_launcher

    ray = cfg.get("ray") or {}
    return make_launcher(cfg.get("launcher") or "local", ray.get("address"), ray.get("cpus_per_trial", 1.0),
                         ray.get("gpus_per_trial", 0.0), ray.get("max_concurrent"), storage_path)


def build_evaluator(cfg: dict[str, Any]):
    """The configured evaluator (``train.*`` or ``evaluator.*`` settings; device and progress from the top level)."""
    name, knobs = settings_of(cfg, "evaluator")
    try:
        return _construct("evaluator", name, {**knobs, **_run_wide("evaluator", name, cfg)})
    except UserError as exc:
        raise _blame_recipe(cfg, exc) from None


def needs_data(strategy: Any, evaluator: Any) -> bool:
    """Whether the run must load images: not when a table answers and the strategy only queries it."""
    return bool(strategy.needs_data or evaluator.needs_data)


def _smallest(total: int, works: Any) -> int:
    """The smallest n in [1, total] for which ``works(n)`` holds (monotone), or total + 1 when none does."""
    low, high = 1, total + 1
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if works(mid) else (mid + 1, high)
    return low


def check_sample_counts(cfg: dict[str, Any], data: ImageData) -> None:
    """Refuse sample counts too small to give every class of ``data`` a place (found by the samplers themselves)."""
    import torch

    from .core.data import split_for_search, stratified_subset

    targets = data.train.targets
    classes = len(torch.unique(targets))

    def search_split(n: int) -> bool:  # both search halves hold every class
        return all(len(torch.unique(targets[part])) == classes for part in split_for_search(targets, n, 0))

    def train_subset(n: int) -> bool:
        return len(torch.unique(targets[stratified_subset(targets, n, 0)])) == classes

    checks = [("search", "train_samples", search_split, "split into the two search halves (weights, architecture)"),
              ("train", "train_samples", train_subset, "train on")]
    for section, key, works, purpose in checks:
        value = (cfg.get(section) or {}).get(key)
        if value is not None and value < len(targets) and not works(value):
            least = _smallest(len(targets), works)
            raise UserError(f"{section}.{key}={value} is too few to {purpose} with every one of the {classes} "
                            f"classes of data={data.name}; use at least {least}, or null for all {len(targets)}")
