"""Write the manifest's JSON Schema to docs/schemas/manifest.schema.json: `python -m genoflows.gwas.schema`.

tests/test_gwas_manifest.py fails when the committed file differs from the model (rerun this to refresh it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genoflows.gwas.manifest import manifest_json_schema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "manifest.schema.json"


def render() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else SCHEMA_PATH
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(render())
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
