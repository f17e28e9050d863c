"""Write deployments/constraints.txt: the installed versions of genoflows' runtime dependencies (transitively).

    make constraints      # after changing pyproject.toml, in the venv the tests ran with

The flow image installs with these constraints, so it holds exactly what the test suite ran with and pip has
nothing to backtrack over (unpinned, it walked back through dozens of boto3 releases).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

OUT = Path(__file__).resolve().parent / "constraints.txt"
HEADER = ("# The versions the test suite ran with, for the flow image (deployments/Dockerfile): the image gets what\n"
          "# was tested, and pip does not backtrack. Regenerate after changing pyproject.toml: make constraints\n")


def runtime_closure(project: str = "genoflows") -> dict[str, str]:
    """name -> installed version for every runtime dependency of `project`, transitively (no extras)."""
    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in distribution(project).requires or []]
    while todo:
        req = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue
        seen[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return seen


if __name__ == "__main__":
    pins = runtime_closure()
    OUT.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"wrote {len(pins)} pins to {OUT}")
