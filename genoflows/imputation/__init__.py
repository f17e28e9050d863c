"""Imputation domain code (no Prefect): input checks, the submit-once record, the Cloudgene and GA4GH WES
clients, polling schedule, safe unzip and the local minimac4 engine. See docs/imputation.md."""
