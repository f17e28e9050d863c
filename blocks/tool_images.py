"""Container images per tool, kept on the Prefect server so a lab can switch hap.py or regenie to a pinned image
from the UI without touching the code or the workers' environment.

Whoever can edit this block decides what runs on the workers, so it accepts only an allow-listed engine and
well-formed image references (no options, no paths); the tool runner checks again before it runs anything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from genoflows.images import check_image

_ENV = ("GENOFLOWS_TOOL_IMAGES", "GENOFLOWS_CONTAINER_ENGINE")


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

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the tool runner uses these images (it reads GENOFLOWS_TOOL_IMAGES and
        GENOFLOWS_CONTAINER_ENGINE); the previous values come back afterwards, so nothing leaks into the
        next flow run of a long-lived process."""
        from genoflows.settings import get_settings

        saved = {key: os.environ.get(key) for key in _ENV}
        os.environ["GENOFLOWS_TOOL_IMAGES"] = json.dumps(self.images)
        os.environ["GENOFLOWS_CONTAINER_ENGINE"] = self.engine
        get_settings.cache_clear()
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            get_settings.cache_clear()


def using_tool_images(block_name: str | None) -> AbstractContextManager[None]:
    """The named ToolImages block applied, or nothing when no name is given."""
    return ToolImages.load(block_name).applied() if block_name else nullcontext()
