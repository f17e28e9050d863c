"""The GWAS manifest: one pydantic model for the old `manifest.json` and the old Step Functions input.

Every path in a manifest is relative to its `s3Path` (an `s3://bucket/prefix` or a local directory) and may
not leave it: absolute paths, URIs and `..` that climb above `s3Path` are rejected with the field named.
`load_manifest` accepts either shape and returns a `Manifest`; `manifest_json_schema` is what
`docs/schemas/manifest.schema.json` holds (a test fails when that file is stale).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the field (or file) and what to do."""


def check_relative_path(value: str) -> str:
    """A path below `s3Path`: relative, no URI scheme, never climbing above its root."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty path relative to s3Path")
    if "://" in value or value.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r} must be relative to s3Path (no absolute path or URI)")
    if "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r} contains a backslash or NUL; use '/' separated relative paths")
    norm = posixpath.normpath(value)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"{value!r} escapes s3Path ('..' climbs above the manifest's s3Path)")
    return norm


RelPath = Annotated[str, Field(min_length=1, description="Path relative to s3Path; may not escape it.")]
Column = Annotated[str, Field(min_length=1, pattern=r"^[^\s,]+$")]

# Extra regenie options a manifest may set: option -> value kind. Everything else (output paths, genotype
# inputs, step selection, threads) is owned by the pipeline.
ALLOWED_OPTIONS: dict[str, Literal["flag", "int", "float", "str"]] = {
    "--bsize": "int",
    "--cv": "int",
    "--loocv": "flag",
    "--l0": "int",
    "--l1": "int",
    "--lowmem": "flag",
    "--minMAC": "float",
    "--minINFO": "float",
    "--firth": "flag",
    "--approx": "flag",
    "--spa": "flag",
    "--pThresh": "float",
    "--cc12": "flag",
    "--apply-rint": "flag",
    "--strict": "flag",
    "--ref-first": "flag",
    "--force-qt": "flag",
    "--test": "str",
    "--maxCatLevels": "int",
}


class InputData(BaseModel):
    """The genotypes: `<s3Path>/<filePrefix>` plus the format's extensions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    format: Literal["bed", "pgen", "bgen", "vcf"] = Field(description="bed (.bed/.bim/.fam), pgen, bgen or vcf.")
    file_prefix: RelPath = Field(
        alias="filePrefix",
        description="Path without extension (bed/pgen) or the file itself for bgen/vcf "
        "(`cohort.bgen`, `cohort.vcf.gz`; a prefix is also accepted).",
    )
    sample_file: RelPath | None = Field(None, alias="sampleFile", description="BGEN .sample file (optional).")

    _paths = field_validator("file_prefix", "sample_file")(lambda v: None if v is None else check_relative_path(v))


class Phenotypes(BaseModel):
    """Phenotypes as a regenie phenotype file (`FID IID Y1 ...`), or inline samples (old Step Functions input)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    file: RelPath | None = Field(None, description="Phenotype file relative to s3Path (header starts FID IID).")
    columns: list[Column] = Field(min_length=1, description="Trait columns to analyse.")
    samples: dict[str, float | None] | None = Field(
        None, description="Inline values (IID -> value; FID = IID) for the single column; written to a file."
    )
    csv_id_column: str | None = Field(
        None, alias="csvIdColumn", description="For a CSV sample manifest: the column holding the sample id."
    )

    _path = field_validator("file")(lambda v: None if v is None else check_relative_path(v))

    @model_validator(mode="after")
    def _one_source(self) -> Phenotypes:
        if (self.file is None) == (self.samples is None):
            raise ValueError("give exactly one of phenotype.file and phenotype.samples")
        if self.samples is not None and len(self.columns) != 1:
            raise ValueError("inline samples carry one trait: phenotype.columns must name exactly one column")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("phenotype.columns repeats a column")
        return self


class Covariates(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    file: RelPath = Field(description="Covariate file relative to s3Path (header starts FID IID).")
    columns: list[Column] = Field(default_factory=list, description="Quantitative covariates (empty = all).")
    categorical: list[Column] = Field(default_factory=list, description="Categorical covariate columns.")

    _path = field_validator("file")(check_relative_path)

    @model_validator(mode="after")
    def _disjoint(self) -> Covariates:
        both = set(self.columns) & set(self.categorical)
        if both:
            raise ValueError(f"covariates {sorted(both)} are listed as both quantitative and categorical")
        return self


class Resources(BaseModel):
    """What one regenie job needs; used as job variables when a step runs on Batch or ECS."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    vcpus: int = Field(2, ge=1, le=256, alias="vCPUs", description="vCPUs per regenie job (also --threads).")
    memory: int = Field(4096, ge=256, le=4_000_000, description="Memory per job in MiB.")

    def job_variables(self) -> dict:
        """ECS/Batch-style job variables (CPU units, MiB) for a deployment run on such a pool."""
        return {"cpu": self.vcpus * 1024, "memory": self.memory}


class Manifest(BaseModel):
    """A GWAS request: genotypes, phenotypes, covariates, trait type, step, options, resources."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, title="genoflows GWAS manifest",
        json_schema_extra={"$comment": "Generated by genoflows.gwas.manifest; do not edit by hand."},
    )

    experiment_id: str = Field(alias="experimentId", pattern=SAFE_ID.pattern, description="Names the output folder.")
    s3_path: str = Field(alias="s3Path", min_length=1, description="s3://bucket/prefix or a local directory.")
    input_data: InputData = Field(alias="inputData")
    phenotype: Phenotypes
    covariates: Covariates | None = None
    trait_type: Literal["qt", "bt"] = Field(alias="traitType", description="qt (quantitative) or bt (binary).")
    start_step: Literal[1, 2] = Field(1, alias="startStep", description="2 = reuse predictionList from step 1.")
    prediction_list: RelPath | None = Field(
        None, alias="predictionList", description="Step-1 `_pred.list` (needed when startStep is 2)."
    )
    keep: RelPath | None = Field(None, description="Samples to keep (FID IID, no header).")
    remove: RelPath | None = Field(None, description="Samples to remove (FID IID, no header).")
    extract: RelPath | None = Field(None, description="Variant IDs to keep (no header).")
    exclude: RelPath | None = Field(None, description="Variant IDs to drop (no header).")
    regenie_options: dict[str, bool | int | float | str] = Field(
        default_factory=dict, alias="regenieOptions",
        description="Allow-listed extra regenie options, e.g. {'--bsize': 200, '--firth': true, '--approx': true}.",
    )
    resources: Resources = Field(default_factory=Resources)

    _paths = field_validator("prediction_list", "keep", "remove", "extract", "exclude")(
        lambda v: None if v is None else check_relative_path(v)
    )

    @field_validator("s3_path")
    @classmethod
    def _root(cls, v: str) -> str:
        if v.startswith("s3://"):
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", v):
                raise ValueError(f"{v!r} is not a valid s3://bucket/prefix")
        elif "://" in v:
            raise ValueError(f"{v!r}: only s3:// URIs or local directories are supported")
        return v.rstrip("/") or "/"

    @field_validator("regenie_options")
    @classmethod
    def _options(cls, opts: dict) -> dict:
        for name, value in opts.items():
            kind = ALLOWED_OPTIONS.get(name)
            if kind is None:
                raise ValueError(
                    f"{name!r} is not an allowed extra option (allowed: {', '.join(sorted(ALLOWED_OPTIONS))}); "
                    "inputs, outputs, --step, --chr and --threads are set by the pipeline"
                )
            ok = {
                "flag": value is True,
                "int": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "str": isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._:-]+", value or "") is not None,
            }[kind]
            if not ok:
                want = {"flag": "true", "int": "a positive integer", "float": "a number", "str": "a word"}[kind]
                raise ValueError(f"{name} must be {want}, got {value!r}")
        if "--test" in opts and opts["--test"] not in ("dominant", "recessive", "additive"):
            raise ValueError("--test must be additive, dominant or recessive")
        return opts

    @model_validator(mode="after")
    def _step(self) -> Manifest:
        if self.start_step == 2 and self.prediction_list is None:
            raise ValueError("startStep 2 needs predictionList (the step-1 _pred.list to reuse)")
        if self.keep and self.remove:
            raise ValueError("give keep or remove, not both (regenie refuses --keep with --remove)")
        if self.trait_type == "qt" and self.regenie_options.get("--cc12"):
            raise ValueError("--cc12 applies to binary traits only (traitType bt)")
        return self

    def uri(self, relative: str) -> str:
        """The full URI (or local path) of a path given relative to s3Path, checked again not to escape."""
        rel = check_relative_path(relative)
        return f"{self.s3_path.rstrip('/')}/{rel}"


class StepFunctionsInput(BaseModel):
    """The old Step Functions execution input, kept so existing callers keep working."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    study_id: str = Field(alias="studyId", pattern=SAFE_ID.pattern)
    dataset_id: str = Field(alias="datasetId", pattern=SAFE_ID.pattern)
    dataset_path: str = Field(
        alias="datasetPath", description="Genotype prefix, e.g. s3://bucket/study/dataset/genotypes/cohort (.bed/.bim/.fam)"
    )
    phenotype: Column = Field(description="The trait name.")
    start_step: Literal[1, 2] = Field(1, alias="startStep")
    trait_type: Literal["qt", "bt"] = Field("qt", alias="traitType")
    format: Literal["bed", "pgen", "bgen", "vcf"] | None = Field(None, description="Default: from the extension, else bed.")
    samples: dict[str, float | None] | list[dict[str, Any]] | None = Field(
        None, description="Inline phenotype values: {sampleId: value} or [{sampleId, value}]."
    )
    sample_manifest: str | None = Field(
        None, alias="sampleManifest", description="CSV (relative to the dataset folder) with sampleId and the trait."
    )
    prediction_list: str | None = Field(None, alias="predictionList")
    covariates: Covariates | None = None

    _paths = field_validator("sample_manifest", "prediction_list")(
        lambda v: None if v is None else check_relative_path(v)
    )

    @model_validator(mode="after")
    def _one_source(self) -> StepFunctionsInput:
        if (self.samples is None) == (self.sample_manifest is None):
            raise ValueError("give exactly one of samples and sampleManifest")
        return self

    def to_manifest(self) -> Manifest:
        """The equivalent manifest: s3Path = the dataset's folder, experimentId = <studyId>-<datasetId>."""
        root, _, name = self.dataset_path.rstrip("/").rpartition("/")
        if not root or not name:
            raise ManifestError(f"datasetPath {self.dataset_path!r}: expected <folder>/<genotype prefix>")
        fmt = self.format
        for ext, guess in ((".bed", "bed"), (".pgen", "pgen"), (".bgen", "bgen"), (".vcf.gz", "vcf"), (".vcf", "vcf")):
            if name.endswith(ext):
                fmt = fmt or guess
                if guess in ("bed", "pgen"):
                    name = name[: -len(ext)]
        if self.samples is not None:
            values = self.samples
            if isinstance(values, list):
                try:
                    values = {str(row["sampleId"]): row.get("value") for row in values}
                except (KeyError, TypeError) as exc:
                    raise ManifestError("samples: each entry needs sampleId and value") from exc
            pheno: dict[str, Any] = {"columns": [self.phenotype], "samples": values}
        else:
            pheno = {"columns": [self.phenotype], "file": self.sample_manifest, "csvIdColumn": "sampleId"}
        return Manifest.model_validate(
            {
                "experimentId": f"{self.study_id}-{self.dataset_id}",
                "s3Path": root,
                "inputData": {"format": fmt or "bed", "filePrefix": name},
                "phenotype": pheno,
                "covariates": self.covariates.model_dump(by_alias=True) if self.covariates else None,
                "traitType": self.trait_type,
                "startStep": self.start_step,
                "predictionList": self.prediction_list,
            }
        )


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling against docs/schemas/manifest.schema.json)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {loc}: {msg}")
    return f"invalid GWAS manifest {source}:\n" + "\n".join(lines)


def load_manifest(data: dict | str | bytes | Manifest, source: str = "") -> Manifest:
    """A `Manifest` from a dict or JSON text in either shape; ManifestError names every bad field."""
    if isinstance(data, Manifest):
        return data
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {source} must be a JSON object, got {type(data).__name__}")
    try:
        if "studyId" in data or "datasetPath" in data:
            return StepFunctionsInput.model_validate(data).to_manifest()
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_format_errors(exc, source)) from None


def manifest_json_schema() -> dict:
    """The JSON Schema of the manifest (field names as written in manifest.json)."""
    return Manifest.model_json_schema(by_alias=True, mode="validation")
