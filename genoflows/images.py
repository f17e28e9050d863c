"""Which container engines and image references genoflows accepts (standard library only).

Whoever can edit a ToolImages block or the settings decides what runs on the workers, so an engine must be on
the allow-list and an image must be a plain reference (`[registry[:port]/]name[:tag][@digest]`), never
something an engine would read as an option (`--privileged`) or a path. Used by the block, the tool runner
and `deployments/image_name.py` (which runs before any dependency is installed).
"""

from __future__ import annotations

import re

ENGINES = ("docker", "podman")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+)(?::[0-9]{1,5})?"
_DOMAIN_PORT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?:[0-9]{1,5}"
IMAGE_REFERENCE = re.compile(
    rf"^(?:(?:{_DOMAIN}|{_DOMAIN_PORT})/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def check_engine(engine: str) -> str:
    """`engine` if it is an allowed container engine, else a ValueError saying which are."""
    if engine not in ENGINES:
        raise ValueError(f"container engine {engine!r} is not allowed: use one of {', '.join(ENGINES)}")
    return engine


def check_image(image: str, what: str = "image") -> str:
    """`image` if it is a well-formed image reference, else a ValueError naming it."""
    if not isinstance(image, str) or len(image) > 255 or not IMAGE_REFERENCE.match(image):
        raise ValueError(
            f"{what} {image!r} is not an image reference: expected [registry[:port]/]name[:tag][@sha256:digest], "
            "e.g. pkrusche/hap.py:v0.3.12 or localhost/genoflows:dev"
        )
    return image
