"""Configs: one ml-collections file per dataset in configs/, `key=value` overrides, saved as JSON."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import numbers
from pathlib import Path

from ml_collections import ConfigDict

from fitm.data.cheap_fakes import SOURCES
from fitm.errors import FitmError

DATASETS = ("digits", "cifar10", "cifar100", "mvtec", "folder")


def load_config(dataset: str | None = None, path: str | None = None) -> ConfigDict:
    """The config of a built-in dataset by name, or of a config file (a .py with get_config(), or a
    config.json saved beside earlier results)."""
    if path is not None:
        return _load_file(Path(path))
    if dataset not in DATASETS:
        raise FitmError(f"--dataset: unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    return importlib.import_module(f"fitm.configs.{dataset}").get_config()


def _load_file(path: Path) -> ConfigDict:
    if path.is_dir():
        raise FitmError(f"--config: {path} is a folder (expected a .py file with get_config() or a config.json)")
    if not path.is_file():
        raise FitmError(f"--config: {path} does not exist (expected a .py file with get_config() or a config.json)")
    if path.suffix == ".json":
        try:
            value = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FitmError(f"--config: {path} is not valid JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(value, dict) or not value:
            raise FitmError(f"--config: {path} holds {type(value).__name__} {str(value)[:40]!r}, expected the JSON "
                            "object of a saved config")
        return ConfigDict(_lists_to_tuples(value))
    spec = importlib.util.spec_from_file_location(f"fitm_user_config_{path.stem}", path)
    if spec is None:
        raise FitmError(f"--config: {path} is neither a .py file with get_config() nor a config.json")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FitmError(f"--config: {path} could not be loaded: expected a .py file with get_config() ({first})") from None
    if not isinstance(config, ConfigDict):
        raise FitmError(f"--config: {path}: get_config() returned {type(config).__name__}, expected an "
                        "ml_collections ConfigDict (layer it on fitm.configs.default.get_config())")
    return config


def _lists_to_tuples(obj):
    """JSON has no tuples; configs keep sequences as tuples so overrides type-check the same way."""
    if isinstance(obj, dict):
        return {k: _lists_to_tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def apply_overrides(config: ConfigDict, overrides: list[str] | tuple[str, ...]) -> ConfigDict:
    """Set `a.b.c=value` items; values are Python literals, and strings may go unquoted."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FitmError(f"--set {item!r}: expected key=value, e.g. detector.epochs=1")
        if not has_key(config, key):
            raise FitmError(f"--set {item!r}: unknown key {key!r}")
        set_key(config, key, _parse_value(item, key, raw, get_key(config, key)))
    return config


def has_key(config: ConfigDict, key: str) -> bool:
    """Whether the dotted `key` (e.g. detector.epochs) names a setting of `config`."""
    node = config
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def get_key(config: ConfigDict, key: str):
    """The value of the dotted `key` (e.g. detector.epochs) of `config`."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def set_key(config: ConfigDict, key: str, value) -> None:
    """Set the dotted `key` (e.g. detector.epochs) of `config`: the one way `--set` and Python settings take."""
    *parents, leaf = key.split(".")
    node = get_key(config, ".".join(parents)) if parents else config
    node[leaf] = value


def _parse_value(item: str, key: str, raw: str, current):
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise FitmError(f"--set {item!r}: {raw!r} is not a valid value for {key}") from None
    if current is None:
        return value
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, (tuple, list)):
        value = (value,) if isinstance(value, (int, float, str)) else value
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise FitmError(f"--set {item!r}: {key} expects a {type(current).__name__}, got {raw!r}")
    return value


def save_config(config: ConfigDict, path) -> None:
    from fitm.io import save_json

    save_json(config.to_dict(), path)


def section(config: ConfigDict, *names: str) -> dict:
    """Plain dicts of the named sections: what a stage's fingerprint is made of."""
    return {name: config[name].to_dict() if isinstance(config[name], ConfigDict) else config[name] for name in names}


def fakes_count(config: ConfigDict, n_normal: int) -> int:
    """fakes.count, never more than the normal training images (0: as many). The detector trains on one
    unweighted shuffle of both, as the authors' equal-sized sets; with many more fakes than normals it learns that
    "fake" is the likely answer (50 normals and 2,500 fakes: accuracy 0.98 from answering "fake" always)."""
    return min(config.fakes.count, n_normal) if config.fakes.count else n_normal


# --- validation: every key checked before any work starts -----------------------------------------------------

def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _non_negative_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finite_number(value, what: str) -> float:
    """`value` as a float when it is a finite real number; NaN, infinities, strings and booleans are refused:
    compared with a score, each would give a silent, meaningless answer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise FitmError(f"{what}={value!r}: expected a finite number")
    return float(value)


def _in_range(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        return _number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return check


_INF = float("inf")
# key: (test, what is expected); keys absent here are checked by type against the default config only.
_RULES = {
    "seed": (_non_negative_int, "an integer >= 0"),
    "data.image_size": (_positive_int, "a positive integer"),
    "sde.beta_min": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "sde.beta_max": (_in_range(0, _INF, lo_open=True), "a number > sde.beta_min"),
    "sde.num_scales": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2"),
    "model.nf": (_positive_int, "a positive integer"),
    "model.ch_mult": (lambda v: len(v) >= 1 and all(_positive_int(m) for m in v), "a tuple of positive integers"),
    "model.num_res_blocks": (_positive_int, "a positive integer"),
    "model.attn_resolutions": (lambda v: all(_positive_int(r) for r in v), "a tuple of positive integers"),
    "model.dropout": (_in_range(0, 1, hi_open=True), "a number in [0, 1)"),
    "model.ema_rate": (_in_range(0, 1, lo_open=True, hi_open=True), "a number in (0, 1)"),
    "training.batch_size": (_positive_int, "a positive integer"),
    "training.n_iters": (_positive_int, "a positive integer"),
    "training.snapshot_iters": (lambda v: all(_positive_int(s) for s in v), "a tuple of positive integers"),
    "training.lr": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "training.warmup": (_non_negative_int, "an integer >= 0"),
    "training.grad_clip": (_in_range(0, _INF), "a number >= 0 (0: no clipping)"),
    "training.eps": (_in_range(0, 1, lo_open=True, hi_open=True), "a number in (0, 1)"),
    "training.log_every": (_positive_int, "a positive integer"),
    "sampling.method": (lambda v: v in ("euler_maruyama", "reverse_diffusion", "ode", "ddim", "dpm_solver"),
                        "one of euler_maruyama, reverse_diffusion, ode, ddim, dpm_solver"),
    "sampling.order": (lambda v: v in (2, 3), "2 or 3"),
    "sampling.corrector": (lambda v: v in ("none", "langevin"), "none or langevin"),
    "sampling.snr": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "sampling.corrector_steps": (_positive_int, "a positive integer"),
    "sampling.steps": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2"),
    "sampling.eps": (_in_range(0, 1, lo_open=True, hi_open=True), "a number in (0, 1)"),
    "sampling.batch_size": (_positive_int, "a positive integer"),
    "sampling.ode_tol": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "fakes.checkpoint": (lambda v: v in ("auto", "last") or v.isdigit(), "'auto', 'last' or a snapshot iteration"),
    "fakes.auto_ratio": (_in_range(1, _INF), "a number >= 1"),
    "fakes.patience": (_positive_int, "a positive integer"),
    "fakes.source": (lambda v: v in SOURCES, "one of " + ", ".join(SOURCES)),
    "fakes.noise_std": (_in_range(0, 255, lo_open=True), "a number in (0, 255]"),
    "fakes.blur_sigma": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "fakes.count": (_non_negative_int, "an integer >= 0 (0: as many as normal training images, and never more)"),
    "fakes.degenerate.flat_std": (_in_range(0, 255), "a number in [0, 255]"),
    "fakes.degenerate.dark_mean": (_in_range(0, 255), "a number in [0, 255]"),
    "fakes.degenerate.bright_mean": (_in_range(0, 255), "a number in [0, 255]"),
    "detector.img_size": (_positive_int, "a positive integer"),
    "detector.resize": (_positive_int, "a positive integer >= detector.img_size"),
    "detector.normalize": (lambda v: v in ("imagenet", "inception"), "imagenet or inception"),
    "detector.frozen_blocks": (_non_negative_int, "an integer >= 0"),
    "detector.dropout": (_in_range(0, 1, hi_open=True), "a number in [0, 1)"),
    "detector.epochs": (_positive_int, "a positive integer"),
    "detector.min_steps": (_non_negative_int, "an integer >= 0"),
    "detector.batch_size": (_positive_int, "a positive integer"),
    "detector.lr": (_in_range(0, _INF, lo_open=True), "a number > 0"),
    "detector.weight_decay": (_in_range(0, _INF), "a number >= 0"),
    "detector.momentum": (_in_range(0, 1, hi_open=True), "a number in [0, 1)"),
    "detector.k": (_positive_int, "a positive integer"),
    "detector.feature_batch_size": (_positive_int, "a positive integer"),
    "detector.holdout_fraction": (_in_range(0, 1, hi_open=True), "a number in [0, 1)"),
    "detector.threshold_quantile": (_in_range(0, 1, lo_open=True), "a number in (0, 1]"),
    "detector.maps.k": (_positive_int, "a positive integer"),
    "detector.maps.bank_size": (_positive_int, "a positive integer"),
    "detector.maps.subsample": (lambda v: v in ("coreset", "random"), "coreset or random"),
    "detector.maps.sigma": (_in_range(0, _INF), "a number >= 0 (0: no smoothing)"),
}


def validate_config(config: ConfigDict, source: str = "config") -> ConfigDict:
    """Refuse a config that cannot run, naming the key and what was expected, before any work is done: every key
    of the default config present with its type, every value in its range, and the cross-key rules."""
    from fitm.configs.default import get_config as default_config

    if not isinstance(config, ConfigDict):
        raise FitmError(f"{source}: expected an ml_collections ConfigDict, got {type(config).__name__}")
    _check_tree(config, default_config(), "", source)
    for key, (test, expected) in _RULES.items():
        value = get_key(config, key)
        if not test(value):
            raise FitmError(f"{source}: {key}={value!r}, expected {expected}")
    if config.sde.beta_max <= config.sde.beta_min:
        raise FitmError(f"{source}: sde.beta_max={config.sde.beta_max} must exceed sde.beta_min={config.sde.beta_min}")
    if config.detector.resize < config.detector.img_size:
        raise FitmError(f"{source}: detector.resize={config.detector.resize} is smaller than detector.img_size="
                        f"{config.detector.img_size} (expected resize >= img_size)")
    if any(s > config.training.n_iters for s in config.training.snapshot_iters):
        raise FitmError(f"{source}: training.snapshot_iters={tuple(config.training.snapshot_iters)} must lie in "
                        f"1..training.n_iters={config.training.n_iters}")
    snapshots = sorted(set(config.training.snapshot_iters) | {config.training.n_iters})
    if config.fakes.checkpoint.isdigit() and int(config.fakes.checkpoint) not in snapshots:
        raise FitmError(f"{source}: fakes.checkpoint={config.fakes.checkpoint!r}, expected 'auto', 'last' or one of "
                        f"the snapshot iterations {snapshots} (training.snapshot_iters="
                        f"{tuple(config.training.snapshot_iters)}, training.n_iters={config.training.n_iters})")
    if config.sampling.corrector != "none" and config.sampling.method not in ("euler_maruyama", "reverse_diffusion"):
        raise FitmError(f"{source}: sampling.corrector={config.sampling.corrector!r} needs sampling.method "
                        f"euler_maruyama or reverse_diffusion, not {config.sampling.method!r}")
    levels = len(config.model.ch_mult)
    if config.data.image_size % 2 ** (levels - 1):
        raise FitmError(f"{source}: data.image_size={config.data.image_size} must be a multiple of "
                        f"2^(len(model.ch_mult)-1)={2 ** (levels - 1)} for model.ch_mult={tuple(config.model.ch_mult)}")
    _check_backbone(config.detector, source)
    return config


def _check_tree(config: ConfigDict, default: ConfigDict, prefix: str, source: str) -> None:
    for key in default:
        name = f"{prefix}{key}"
        if key not in config:
            raise FitmError(f"{source}: key {name} is missing (expected every key of the default config; a saved "
                            "config.json holds them all)")
        value, reference = config[key], default[key]
        if isinstance(reference, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise FitmError(f"{source}: {name} must be a section of keys, got {value!r}")
            _check_tree(value, reference, f"{name}.", source)
        elif not _same_kind(value, reference):
            raise FitmError(f"{source}: {name}={value!r}, expected a {_kind(reference)}")
    extra = [f"{prefix}{key}" for key in config if key not in default]
    if extra:
        raise FitmError(f"{source}: unknown key {extra[0]} (expected only the keys of configs/default.py)")


def _same_kind(value, reference) -> bool:
    if reference is None:  # detector.arch overrides: unset, or a positive integer
        return value is None or _positive_int(value)
    if isinstance(reference, bool):
        return isinstance(value, bool)
    if isinstance(reference, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(reference, float):
        return _number(value)
    if isinstance(reference, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(reference))


def _kind(reference) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "tuple", list: "tuple"}.get(
        type(reference), type(reference).__name__)


def _check_backbone(det: ConfigDict, source: str) -> None:
    import timm

    arch = det.backbone.split(".")[0]
    if not timm.is_model(arch):
        raise FitmError(f"{source}: detector.backbone={det.backbone!r} is not a timm model name")
