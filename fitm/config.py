"""Configs: one ml-collections file per dataset in configs/, `key=value` overrides, saved as JSON."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path

from ml_collections import ConfigDict

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
    if not path.is_file():
        raise FitmError(f"--config: {path} does not exist")
    if path.suffix == ".json":
        try:
            return ConfigDict(_lists_to_tuples(json.loads(path.read_text())))
        except json.JSONDecodeError as e:
            raise FitmError(f"--config: {path} is not valid JSON ({e})") from e
    spec = importlib.util.spec_from_file_location(f"fitm_user_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception as e:
        raise FitmError(f"--config: {path} could not be loaded: expected a .py file with get_config() ({e})") from e


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
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
            if not isinstance(node, ConfigDict):
                raise FitmError(f"--set {item!r}: unknown key {key!r}")
        if leaf not in node:
            raise FitmError(f"--set {item!r}: unknown key {key!r}")
        node[leaf] = _parse_value(item, key, raw, node[leaf])
    return config


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
