"""Print the checkout a process worker runs the flows from: GENOFLOWS_HOME, else this repository's root.

Run by prefect.yaml's build step of the process deployments (`{{ home.stdout }}` in their pull step), so a
deployment made without GENOFLOWS_HOME points at the checkout it was deployed from instead of at "" (which
only failed later, on the worker). A path that is not a genoflows checkout stops `prefect deploy` with the
reason. Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def checkout_dir() -> Path:
    raw = os.environ.get("GENOFLOWS_HOME", "").strip()
    home = Path(raw).expanduser() if raw else Path(__file__).resolve().parents[1]
    if not home.is_absolute():
        raise ValueError(f"GENOFLOWS_HOME={raw!r} must be an absolute path (workers start elsewhere)")
    if not (home / "prefect.yaml").is_file() or not (home / "flows").is_dir():
        raise ValueError(f"GENOFLOWS_HOME={str(home)!r} is not a genoflows checkout (no prefect.yaml and flows/)")
    return home


if __name__ == "__main__":
    try:
        print(checkout_dir())
    except ValueError as exc:
        sys.exit(f"genoflows: {exc}")
