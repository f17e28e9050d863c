"""Read back what a flow published to the Prefect API (tests and the demo check artifacts this way)."""

from __future__ import annotations

import asyncio


def read_artifacts(key: str) -> list:
    """Every artifact version stored under `key`, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
            )

    return asyncio.run(read())
