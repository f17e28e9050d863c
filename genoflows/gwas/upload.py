"""Upload a GWAS dataset and its manifest in one command (replaces the old upload_and_run.py).

    python -m genoflows.gwas.upload study/manifest.json --to s3://lab-gwas/studies/exp17 [--start gwas/gwas]

The manifest's `s3Path` may be a local folder (or is taken as the manifest's folder when it is not a local
directory). The manifest is checked first (fields, every referenced file present, phenotypes and sample ids),
then every referenced file is uploaded below `--to` at the same relative path, and the manifest goes up LAST
with `s3Path` rewritten to `--to`, so a watcher never sees a manifest whose data is still uploading.
`--start DEPLOYMENT` also starts the run at once, with the same idempotency key the watcher uses, so the
watcher does not start it a second time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genoflows.gwas import storage
from genoflows.gwas.inputs import InputError, check_phenotypes, read_table
from genoflows.gwas.manifest import ManifestError, load_manifest
from genoflows.gwas.stage import check_files_exist


def upload_dataset(manifest_path: Path, dest: str, *, manifest_name: str = "manifest.json", client=None) -> tuple[str, str]:
    """Check, upload data then manifest; returns (manifest URI, its ETag)."""
    raw = json.loads(manifest_path.read_text())
    m = load_manifest(raw, str(manifest_path))
    if storage.is_s3(m.s3_path):
        raise InputError(f"{manifest_path}: s3Path is already {m.s3_path}; upload takes a local dataset")
    if not storage.is_s3(m.s3_path):  # a local s3Path is relative to the manifest's folder
        root = (manifest_path.resolve().parent / m.s3_path).resolve()
        m = m.model_copy(update={"s3_path": str(root if root.is_dir() else manifest_path.resolve().parent)})
    found = check_files_exist(m)
    if m.phenotype.file and not m.phenotype.csv_id_column:
        check_phenotypes(read_table(Path(found[m.phenotype.file]), m.phenotype.file), m.phenotype.columns, m.trait_type,
                         cc12=bool(m.regenie_options.get("--cc12")))
    if not storage.is_s3(dest):
        raise SystemExit(f"--to must be an s3:// URI, got {dest!r}")
    client = client or storage.client_for()
    for rel, local in sorted(found.items()):
        uri = storage.join(dest, rel)
        storage.upload(Path(local), uri, client)
        print(f"uploaded {rel} -> {uri}")
    final = m.model_copy(update={"s3_path": dest.rstrip("/")})
    body = final.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    manifest_uri = storage.join(dest, manifest_name)
    bucket, key = storage.split_s3_uri(manifest_uri)
    client.put_object(Bucket=bucket, Key=key, Body=body.encode())
    etag = storage.stat(manifest_uri, client).etag
    print(f"manifest -> {manifest_uri} (ETag {etag})")
    return manifest_uri, etag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genoflows.gwas.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="local manifest.json (paths relative to its s3Path / folder)")
    parser.add_argument("--to", required=True, help="s3://bucket/prefix to upload the dataset to")
    parser.add_argument("--name", default="manifest.json", help="object name of the manifest (manifest.json)")
    parser.add_argument("--start", metavar="DEPLOYMENT", help="also start this gwas deployment now (e.g. gwas/gwas)")
    parser.add_argument("--engine", default="auto", choices=["auto", "regenie", "builtin"])
    parser.add_argument("--out-dir", default=None, help="out_dir parameter for --start")
    args = parser.parse_args(argv)
    try:
        uri, etag = upload_dataset(args.manifest, args.to, manifest_name=args.name)
    except (ManifestError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.start:
        from prefect.deployments import run_deployment

        from flows.gwas import idempotency_key

        params = {"manifest": uri, "manifest_etag": etag, "engine": args.engine}
        if args.out_dir:
            params["out_dir"] = args.out_dir
        fr = run_deployment(args.start, parameters=params, idempotency_key=idempotency_key(uri, etag), timeout=0)
        print(f"flow run {fr.name} ({fr.id}) for {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
