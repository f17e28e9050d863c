"""Per-species settings for the multi-species flow, from YAML (one file per species, or one with a list).

A YAML entry holds the parameters of one `rnaseq_quant` call. They are validated by a model built from the
flow's own signature (`params_model`), so names, types, limits and defaults have one definition: the flow.
Relative paths inside a YAML file are taken relative to that file, so a project folder can be moved.
"""

from __future__ import annotations

import inspect
import posixpath
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model


class ConfigError(ValueError):
    """A species config file is missing, malformed or has bad values."""


def params_model(fn: Callable[..., Any], name: str, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model with exactly `fn`'s parameters (annotations incl. limits, defaults) except `exclude`
    (what the caller sets once for all entries); unknown keys fail."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {
        p.name: (hints[p.name], ... if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name not in exclude
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=f"The parameters of `{fn.__name__}`.",
                        **fields)  # fmt: skip


def _absolutise(value: object, base: Path | str) -> object:
    """A relative path of a config resolved against the config's own location (a directory or a URI prefix)."""
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
        if isinstance(base, str):  # a config fetched from s3:// or https://: its inputs sit beside it there
            return posixpath.join(base.rstrip("/"), value)
        return str((base / value).resolve())
    return value


def load_configs(spec: str | list[str], model: type[BaseModel], origins: dict[str, str] | None = None,
                 remote_out_root: Path | None = None) -> list[BaseModel]:
    """A list of per-species YAML paths, or one YAML holding `species: [{...}, ...]` plus shared keys.

    `origins` maps a local copy to the URI it was fetched from: its relative inputs resolve against that URI's
    prefix, and its relative `out_dir` under `remote_out_root` (a remote config has no local directory)."""
    origins = origins or {}
    paths = [spec] if isinstance(spec, str) else list(spec)
    out: list[BaseModel] = []
    for p in paths:
        path = Path(p)
        origin = origins.get(str(p))
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read species config {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping of parameters at the top level")
        items = doc.pop("species") if isinstance(doc.get("species"), list) else [{}]
        for i, item in enumerate(items):
            merged = {**doc, **(item if isinstance(item, dict) else {"species": item})}
            for key in ("metadata", "transcriptome", "out_dir"):
                if key in merged and not (key == "metadata" and isinstance(merged[key], list)):
                    base: Path | str = path.parent
                    if origin is not None:
                        base = (remote_out_root or Path.cwd()) if key == "out_dir" else origin.rsplit("/", 1)[0]
                    merged[key] = _absolutise(merged[key], base)
            try:
                out.append(model(**merged))
            except ValidationError as exc:
                raise ConfigError(f"{path} (species entry {i + 1}): {exc}") from exc
    return out
