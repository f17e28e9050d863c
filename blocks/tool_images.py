"""Container images per tool, kept on the Prefect server so a lab can switch hap.py or regenie to a pinned image
from the UI without touching the code or the workers' environment."""

from __future__ import annotations

import json
import os

from prefect.blocks.core import Block
from pydantic import Field


class ToolImages(Block):
    """Which container image runs which tool (tools not listed run from PATH)."""

    _block_type_name = "Genoflows Tool Images"
    _block_type_slug = "genoflows-tool-images"
    _description = "Container image per external tool, e.g. {'hap.py': 'pkrusche/hap.py:v0.3.12'}."

    images: dict[str, str] = Field(default_factory=dict, description="tool name -> image reference")
    engine: str = Field("docker", description="docker or podman")

    def activate(self) -> None:
        """Apply to this process: the tool runner reads GENOFLOWS_TOOL_IMAGES / GENOFLOWS_CONTAINER_ENGINE."""
        from genoflows.settings import get_settings

        os.environ["GENOFLOWS_TOOL_IMAGES"] = json.dumps(self.images)
        os.environ["GENOFLOWS_CONTAINER_ENGINE"] = self.engine
        get_settings.cache_clear()
