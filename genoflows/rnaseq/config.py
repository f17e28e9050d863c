"""Per-species settings for the multi-species flow, from YAML (one file per species, or one with a list).

Relative paths inside a YAML file are taken relative to that file, so a project folder can be moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator

SourceName = Literal["ena", "aws", "ncbi"]


class ConfigError(ValueError):
    """A species config file is missing, malformed or has bad values."""


class SpeciesConfig(BaseModel):
    """The parameters of one `rnaseq_quant` run."""

    model_config = ConfigDict(extra="forbid")

    species: str = Field(description="Scientific name, e.g. 'Camponotus floridanus'.")
    metadata: str | list[str] = Field(description="amalgkit metadata.tsv (path/URI) or run accessions.")
    transcriptome: str = Field(description="Transcript FASTA (.fa/.fa.gz), path or URI.")
    out_dir: str = "data/rnaseq"
    threads: int = Field(2, ge=1, le=256)
    max_downloads: int = Field(4, ge=1, le=64)
    disk_budget: ByteSize = Field(ByteSize(40 * 10**9), description="e.g. '40GB', '500MB' or bytes.")
    sources: list[SourceName] = Field(default_factory=lambda: ["ena", "aws"])
    engine: Literal["kallisto"] = "kallisto"
    fragment_length: float | None = Field(None, gt=0, description="Single-end -l (default from nominal_length).")
    fragment_sd: float | None = Field(None, gt=0)

    @field_validator("sources")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one source")
        return v


def _absolutise(value: object, base: Path) -> object:
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def load_configs(spec: str | list[str]) -> list[SpeciesConfig]:
    """A list of per-species YAML paths, or one YAML holding `species: [{...}, ...]` plus shared keys."""
    paths = [spec] if isinstance(spec, str) else list(spec)
    out: list[SpeciesConfig] = []
    for p in paths:
        path = Path(p)
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
                    merged[key] = _absolutise(merged[key], path.parent)
            try:
                out.append(SpeciesConfig(**merged))
            except ValidationError as exc:
                raise ConfigError(f"{path} (species entry {i + 1}): {exc}") from exc
    return out
