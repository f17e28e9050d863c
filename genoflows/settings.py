"""Project settings: one place for directories, endpoints and tool images.

Values come from `GENOFLOWS_*` environment variables or a `.env` file; flows read them at run time, so the
same code runs against a lab mirror, a test server or the public services by changing the environment only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

GIAB_PUBLIC_BASE = "https://ftp-trace.ncbi.nlm.nih.gov/ReferenceSamples/giab/release"


class Settings(BaseSettings):
    """Everything a pipeline needs to know about where things are."""

    # extra="ignore": the same .env usually carries PREFECT_* lines too.
    model_config = SettingsConfigDict(
        env_prefix="GENOFLOWS_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    data_dir: Path = Field(Path("data"), description="Working data (inputs staged from S3, run outputs).")
    reference_dir: Path = Field(
        Path("data/references"), description="Cache of truth sets and reference genomes, shared by runs."
    )
    cache_dir: Path = Field(Path("data/cache"), description="Tool indices and other rebuildable artefacts.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None = AWS.")
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "us-east-1"
    giab_base_url: str = Field(GIAB_PUBLIC_BASE, description="Root of a GIAB `release/` tree (NCBI or a mirror).")
    reference_fasta_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "GRCh38": f"{GIAB_PUBLIC_BASE}/references/GRCh38/GCA_000001405.15_GRCh38_no_alt_analysis_set.fasta.gz",
            "GRCh37": f"{GIAB_PUBLIC_BASE}/references/GRCh37/hs37d5.fa.gz",
        },
        description="Reference FASTA per genome build.",
    )
    ena_base_url: str = Field(
        "https://www.ebi.ac.uk/ena/portal/api", description="ENA portal API root (filereport lives below it)."
    )
    sra_odp_base_url: str = Field(
        "https://sra-pub-run-odp.s3.amazonaws.com/sra", description="AWS Open Data SRA objects (<base>/<run>/<run>)."
    )
    ncbi_sdl_url: str = Field(
        "https://locate.ncbi.nlm.nih.gov/sdl/2/retrieve", description="NCBI SDL locate API (where a run's .sra lives)."
    )
    tool_images: dict[str, str] = Field(
        default_factory=dict,
        description="Container image per tool (e.g. {'happy': 'pkrusche/hap.py:v0.3.12'}); empty = run on PATH.",
    )
    container_engine: str = Field("docker", description="docker or podman, used when a tool image is set.")
    http_timeout_seconds: float = Field(60.0, description="Timeout of one HTTP request (connect/read), seconds.")
    retry_attempts: int = Field(
        8, ge=0, description="Retries of a transient failure (5xx, 429, dropped connection, corrupt body)."
    )
    retry_base_delay_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles each attempt.")
    retry_max_delay_seconds: float = Field(
        120.0, ge=0, description="Cap of one retry delay; with the defaults the retries span about six minutes."
    )
    # --- fetch layer (issue 6, fetch-trust) ---
    progress_artifact_min_bytes: int = Field(
        64 << 20, ge=0, description="Downloads smaller than this get no progress artifact (bytes)."
    )

    # --- imputation (issue 9): how patiently a remote imputation job is polled ---
    imputation_poll_initial_seconds: float = Field(
        30.0, gt=0, description="First wait after a job changes state; it grows by the factor up to the caps."
    )
    imputation_poll_factor: float = Field(1.5, ge=1, description="Growth of the poll interval per unchanged status.")
    imputation_poll_cap_seconds: float = Field(300.0, gt=0, description="Longest wait while a job runs.")
    imputation_poll_queued_cap_seconds: float = Field(900.0, gt=0, description="Longest wait while a job is queued.")

    # --- scale-out (tasks/runners.py) ---
    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads", description="Task runner of every flow: threads (one machine), dask or ray (a cluster)."
    )
    max_workers: int = Field(16, ge=1, description="Threads of the default task runner (Prefect's is unbounded).")
    dask_address: str | None = Field(None, description="Dask scheduler to join (tcp://host:8786); None = local.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of a local Dask cluster.")
    ray_address: str | None = Field(None, description="Ray cluster address (ray://host:10001); None = local.")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()
