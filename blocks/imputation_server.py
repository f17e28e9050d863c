"""An imputation service a lab uses: a Cloudgene server (MIS2, AfriGen-D/H3Africa, TOPMed) or a GA4GH WES
endpoint. Save one per service and account; the token is a SecretStr (encrypted by Prefect, never logged)."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, PositiveInt, SecretStr


class ImputationServer(Block):
    """Where imputation jobs go and how to authenticate there."""

    _block_type_name = "Genoflows Imputation Server"
    _block_type_slug = "genoflows-imputation-server"
    _description = "A Michigan-type (Cloudgene) imputation server or a GA4GH WES service, with its API token."

    kind: Literal["cloudgene", "wes"] = Field(
        "cloudgene", description="cloudgene (MIS2, TOPMed, AfriGen-D) or wes"
    )
    base_url: str = Field(
        ...,
        description="Server root, e.g. https://imputationserver.sph.umich.edu (cloudgene) or "
        "https://wes.example.org/ga4gh/wes/v1 (wes)",
    )
    app_id: str = Field(
        "imputationserver2",
        description="Cloudgene app id used in /api/v2/jobs/submit/<app> (MIS2 and AfriGen-D: imputationserver2; "
        "TOPMed: imputationserver). For WES: the workflow URL to run.",
    )
    token: SecretStr = Field(..., description="API token (Cloudgene X-Auth-Token) or WES bearer token")
    workflow_type: str = Field("CWL", description="WES only: workflow_type")
    workflow_type_version: str = Field("v1.2", description="WES only: workflow_type_version")
    max_concurrent_jobs: PositiveInt | None = Field(
        None,
        description="The account's limit of simultaneously active jobs (MIS2/Cloudgene default: 2). When set, "
        "every flow run holds a slot of the Prefect global concurrency limit `imputation-account-<block name>` "
        "while its job is active, so flow runs together never exceed it. Empty: no limit on this side.",
    )
