"""Configuration: Hydra's compose API over ``xsearch/conf``, with user-facing validation.

Every mistake a user can make on the command line ends as a ``UserError`` whose message says what
was wrong and what is valid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .core.data import ImageData, load_dataset
from .core.errors import UserError
from .core.registry import call_with_accepted

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("space", "strategy", "data", "evaluator", "budget")
_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


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
    if number <= 0:
        raise UserError(f"{what} must be positive, got {value!r}")
    return int(round(number))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: list[str]) -> DictConfig:
    """The resolved configuration for ``overrides`` (Hydra grammar), or a UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for item in overrides:
        if "=" not in item:
            raise UserError(f"argument {item!r} is not an override; write key=value (e.g. seed=1) or "
                            f"group=option (e.g. space=mbv3); groups: {', '.join(GROUPS)}")
        key, value = item.split("=", 1)
        group = key.lstrip("+~")
        if group in GROUPS and value not in group_options(group):
            raise UserError(f"unknown {group} {value!r}; valid {group} options: {', '.join(group_options(group))}.")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose("config", overrides=overrides)
    except Exception as exc:  # Hydra's own exceptions: rewrite them for the user
        raise UserError(_explain(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _explain(exc: Exception, overrides: list[str]) -> str:
    text = str(exc)
    m = re.search(r"Key '([^']+)' is not in struct", text) or re.search(r"Could not override '([^']+)'", text)
    if m:
        bad = next((o.split("=", 1)[0] for o in overrides if m.group(1) in o.split("=", 1)[0]), m.group(1))
        parent = bad.rsplit(".", 1)[0] if "." in bad else ""
        base = compose_defaults([o for o in overrides if o.split("=", 1)[0] in GROUPS])
        node = OmegaConf.select(base, parent) if parent else base
        keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
        where = f"under '{parent}'" if parent else "at the top level"
        return (f"unknown configuration key {bad!r}; valid keys {where}: {', '.join(map(str, keys))}. "
                f"Groups: {', '.join(GROUPS)} (e.g. space=mbv3). Check the spelling, or list options with "
                f"'xsearch list'.")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"invalid overrides {overrides}: {first}"


def compose_defaults(group_overrides: list[str] | None = None) -> DictConfig:
    """The configuration with only group choices applied: what every key defaults to."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=group_overrides or [])
    GlobalHydra.instance().clear()
    return cfg


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check the values Hydra cannot type-check; returns the config as a plain dict with parsed numbers."""
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    choices = [f"{g}={plain[g]['name']}" for g in ("space", "strategy", "data", "evaluator")]
    defaults = OmegaConf.to_container(compose_defaults(choices), resolve=True)
    for section in ("space", "search", "train", "data"):
        for key, default in defaults.get(section, {}).items():  # type: ignore[union-attr]
            value = plain.get(section, {}).get(key)
            if isinstance(default, float) and not isinstance(value, bool) and value is not None:
                try:
                    plain[section][key] = float(value)
                except (TypeError, ValueError):
                    raise UserError(f"{section}.{key}={value!r} is not a number (default {default})") from None
    plain["constraints"]["flops"] = parse_count(plain["constraints"].get("flops"))
    try:
        plain["seed"] = int(plain["seed"])
    except (TypeError, ValueError):
        raise UserError(f"seed={plain['seed']!r} is not an integer") from None
    if plain["device"] not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={plain['device']!r} is not valid; use auto, cpu or cuda")
    if plain["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    minimum = {"warmup_epochs": 0}
    for section in ("search", "train"):
        for key in ("epochs", "warmup_epochs", "batch_size", "train_samples", "test_samples", "max_trials"):
            value = plain.get(section, {}).get(key)
            if value is not None:
                plain[section][key] = _whole(value, f"{section}.{key}", minimum.get(key, 1))
    return plain


def _whole(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{name}={value!r} is not a whole number (at least {minimum})")
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number (at least {minimum})") from None
    if number < minimum:
        raise UserError(f"{name}={value!r} must be at least {minimum}")
    return number


# --- building the configured components -------------------------------------------------
def build_data(cfg: dict[str, Any]) -> ImageData:
    kwargs = {k: v for k, v in cfg["data"].items() if k != "name"}
    return load_dataset(cfg["data"]["name"], **kwargs)


def build_space(cfg: dict[str, Any], data: ImageData | None):
    """The configured space, sized for ``data`` (or at the space's own defaults when there is no data)."""
    from xsearch.search_spaces import get_space

    kwargs = {k: v for k, v in cfg["space"].items() if k != "name"}
    if data is not None:
        c, h, _ = data.input_shape
        kwargs = {"num_classes": data.num_classes, "in_chans": c, "image_size": h, **kwargs}
    return get_space(cfg["space"]["name"], **kwargs)


def _construct(factory: Any, kind: str, name: str, knobs: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Call ``factory`` with the knobs it accepts (budgets set knobs shared by several strategies)."""
    try:
        return call_with_accepted(factory, {**knobs, **extra})
    except ValueError as exc:
        raise UserError(f"{kind} {name!r}: {exc}") from None


def build_strategy(cfg: dict[str, Any]):
    from xsearch.strategies import STRATEGIES

    name = cfg["strategy"]["name"]
    return _construct(STRATEGIES.get(name), "strategy", name, cfg.get("search", {}),
                      {"seed": cfg["seed"], "device": cfg["device"], "show_progress": cfg["progress"]})


def build_evaluator(cfg: dict[str, Any]):
    from xsearch.evaluators import EVALUATORS

    name = cfg["evaluator"]["name"]
    knobs = {**cfg.get("train", {}), **{k: v for k, v in cfg["evaluator"].items() if k != "name"}}
    return _construct(EVALUATORS.get(name), "evaluator", name, knobs,
                      {"device": cfg["device"], "show_progress": cfg["progress"]})


def needs_data(strategy: Any, evaluator: Any) -> bool:
    """Whether the run must load images: not when a table answers and the strategy only queries it."""
    return bool(strategy.needs_data or evaluator.needs_data)
