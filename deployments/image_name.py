"""Print the flow image a Docker/ECS deployment runs: GENOFLOWS_IMAGE, else genoflows:latest.

Run by prefect.yaml's build step (`{{ image.stdout }}`), so a deployment never registers with an empty or
malformed image; a bad value stops `prefect deploy` with the reason. Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genoflows.images import check_image  # noqa: E402 - after the path set-up

DEFAULT_IMAGE = "genoflows:latest"


def image_name() -> str:
    return check_image(os.environ.get("GENOFLOWS_IMAGE", "").strip() or DEFAULT_IMAGE, "GENOFLOWS_IMAGE")


if __name__ == "__main__":
    try:
        print(image_name())
    except ValueError as exc:
        sys.exit(f"genoflows: {exc}")
