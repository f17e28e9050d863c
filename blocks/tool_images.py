"""Container images per tool, kept on the Prefect server so a lab can switch hap.py or regenie to a pinned image
from the UI without touching the code or the workers' environment.

Whoever can edit this block decides what runs on the workers, so it accepts only an allow-listed engine and
well-formed image references (no options, no paths); the tool runner checks again before it runs anything."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from genoflows.images import check_image
from genoflows.toolrun import images_applied


class ToolImages(Block):
    """Which container image runs which tool (tools not listed run from PATH)."""

    _block_type_name = "Genoflows Tool Images"
    _block_type_slug = "genoflows-tool-images"
    _description = "Container image per external tool, e.g. {'hap.py': 'pkrusche/hap.py:v0.3.12'}."

    images: dict[str, str] = Field(default_factory=dict, description="tool name -> image reference")
    engine: Literal["docker", "podman"] = Field("docker", description="docker or podman")

    @field_validator("images")
    @classmethod
    def _check_images(cls, images: dict[str, str]) -> dict[str, str]:
        for tool, image in images.items():
            if not tool or "/" in tool or tool.startswith("-"):
                raise ValueError(f"tool name {tool!r} must be a plain program name such as hap.py")
            check_image(image, f"image for {tool}")
        return images

    def applied(self) -> AbstractContextManager[None]:
        """Within the block the tool runner uses these images and this engine, for the current context only
        (the task run or flow run that applied it, and threads started from it): nothing leaks into another
        task on the same worker or the next flow run of a long-lived process."""
        return images_applied(self.images, self.engine)
