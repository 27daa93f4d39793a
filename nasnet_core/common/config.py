"""Configs of classification training and architecture search: one schema format, one loader.

A schema is a list of ``Key(name, default, type, comment)`` with dotted names
(``solver.lr``, ``reward.child.epochs``). A config is the nested dict of those keys. YAML
files and ``KEY VALUE`` overrides (``solver.epochs 1 train.threads 1``, the Detectron2
command-line syntax) may only set keys of the schema, with a value of the key's type;
anything else raises one ConfigError naming the key. A new config key goes into
``CLASSIFICATION_KEYS`` or ``SEARCH_KEYS`` (``config_keys.py``), with its default, type and comment.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config_keys import CLASSIFICATION_KEYS, SEARCH_KEYS  # the tables: one row per key
from .fileio import atomic_write_text, read_yaml_mapping

__all__ = ["ConfigError", "Key", "Schema", "CLASSIFICATION", "SEARCH", "load_config", "apply_overrides",
           "parse_pairs", "dump_config", "write_config", "flatten", "CLASSIFICATION_KEYS", "SEARCH_KEYS"]


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key or has a wrong type."""


@dataclass(frozen=True)
class Key:
    """One config key: dotted name, default (None: nullable), type and a one-line comment."""

    name: str
    default: Any
    type: type
    comment: str


_TOGGLE_VALUES = ("auto", "on", "off")


def _coerce(key: Key, value: Any) -> Any:
    """``value`` checked against ``key.type`` (and converted where YAML 1.1 reads it oddly)."""
    if value is None:
        if key.default is None or key.type is dict:
            return {} if key.type is dict else None
        raise ConfigError(f"config key {key.name!r} may not be null (default {key.default!r})")
    t = key.type
    if t is float and isinstance(value, str):  # YAML 1.1 reads "5e-05" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if t is str and isinstance(value, bool) and key.default in _TOGGLE_VALUES:
        return "on" if value else "off"  # YAML 1.1 reads bare on/off as booleans
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), int: number and isinstance(value, int), float: number}.get(
        t, isinstance(value, t))
    if not ok:
        raise ConfigError(f"config key {key.name!r} expects {t.__name__} (default {key.default!r}), "
                          f"got {value!r}")
    if t is float:
        return float(value)
    return dict(value) if t is dict else value


class Schema:
    """An ordered set of Keys: defaults, checked updates from files and overrides, commented dump."""

    def __init__(self, name: str, keys: list[Key]):
        self.name = name
        self.keys = {k.name: k for k in keys}
        self.sections = {k.name.rsplit(".", i)[0] for k in keys for i in range(1, k.name.count(".") + 1)}

    def defaults(self) -> dict:
        """A fresh nested config holding every key's default."""
        cfg: dict = {}
        for key in self.keys.values():
            *parents, leaf = key.name.split(".")
            node = cfg
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = copy.deepcopy(key.default)
        return cfg

    def _unknown(self, dotted: str) -> ConfigError:
        parent = dotted.rpartition(".")[0]
        tops = sorted({k.split(".")[0] for k in self.keys})
        close = difflib.get_close_matches(dotted, list(self.keys) + tops, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        if parent in self.sections:
            known = [k.rpartition(".")[2] for k in self.keys if k.rpartition(".")[0] == parent]
            known += sorted(s.rpartition(".")[2] for s in self.sections if s.rpartition(".")[0] == parent)
            where = f"known keys in {parent!r}: {', '.join(known)}"
        else:
            where = f"known sections: {', '.join(tops)}"
        return ConfigError(f"unknown {self.name} config key {dotted!r}{hint}; {where}")

    def set(self, cfg: dict, dotted: str, value: Any) -> None:
        """Set key (or, with a mapping, every key of section) ``dotted`` in ``cfg`` after checking it."""
        if dotted in self.sections:
            if value is None:
                return
            if not isinstance(value, dict):
                raise ConfigError(f"config section {dotted!r} must be a mapping, got {value!r}")
            for sub, v in value.items():
                self.set(cfg, f"{dotted}.{sub}", v)
            return
        if dotted not in self.keys:
            raise self._unknown(dotted)
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = _coerce(self.keys[dotted], value)

    def update(self, cfg: dict, data: dict) -> dict:
        """``cfg`` updated in place with the nested mapping ``data`` (a YAML file's content)."""
        for top, value in data.items():
            if top not in self.sections:
                raise self._unknown(str(top))
            self.set(cfg, top, value)
        return cfg

    def dump(self, cfg: dict) -> str:
        """YAML text of ``cfg``, every key with its comment (loads back to ``cfg``)."""
        lines: list[str] = []
        prev: list[str] = []
        flat = flatten(cfg)
        for key in self.keys.values():
            *parents, leaf = key.name.split(".")
            common = next((i for i, (a, b) in enumerate(zip(parents, prev)) if a != b),
                          min(len(parents), len(prev)))
            for depth in range(common, len(parents)):
                lines.append(f"{'  ' * depth}{parents[depth]}:")
            prev = parents
            value = yaml.safe_dump(flat[key.name], default_flow_style=True, width=10**6).strip()
            value = value.removesuffix("...").strip()
            lines.append(f"{'  ' * len(parents)}{leaf}: {value}  # {key.comment}")
        return "\n".join(lines) + "\n"


CLASSIFICATION = Schema("classification", [Key(*k) for k in CLASSIFICATION_KEYS])
SEARCH = Schema("search", [Key(*k) for k in SEARCH_KEYS])


def parse_pairs(overrides: list) -> list[tuple[str, Any]]:
    """``["key", "value", ...]`` -> ``[(key, value), ...]``; string values parsed as YAML scalars."""
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs, got an odd list: {overrides}")
    pairs = []
    for key, raw in zip(overrides[::2], overrides[1::2]):
        value = raw
        if isinstance(raw, str):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        pairs.append((str(key), value))
    return pairs


def apply_overrides(cfg: dict, overrides: list, schema: Schema = CLASSIFICATION) -> dict:
    """Apply ``["section.key", "value", ...]`` pairs; string values are parsed as YAML scalars."""
    for key, value in parse_pairs(overrides):
        schema.set(cfg, key, value)
    return cfg


def load_config(path: str | Path | None = None, overrides: list | None = None,
                schema: Schema = CLASSIFICATION) -> dict:
    """Defaults of ``schema``, updated by the YAML file at ``path``, then by ``KEY VALUE`` overrides."""
    cfg = schema.defaults()
    if path is not None:
        schema.update(cfg, read_yaml_mapping(path, ConfigError))
    return apply_overrides(cfg, overrides or [], schema)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` view of a nested config (free-form mappings stay whole)."""
    out = {}
    for k, v in cfg.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and not (dotted in CLASSIFICATION.keys or dotted in SEARCH.keys):
            out.update(flatten(v, dotted + "."))
        else:
            out[dotted] = v
    return out


def dump_config(cfg: dict, schema: Schema = CLASSIFICATION) -> str:
    """Commented YAML text of ``cfg``."""
    return schema.dump(cfg)


def write_config(cfg: dict, path: str | Path, schema: Schema = CLASSIFICATION) -> Path:
    """Write the commented resolved config atomically."""
    return atomic_write_text(path, schema.dump(cfg))
