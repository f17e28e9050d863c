"""Finding the lab's input for a sample in a local directory or an S3 prefix (moto server)."""

from __future__ import annotations

import boto3
import pytest

from genoflows.fetch import PermanentFetchError
from genoflows.giab.source import SourceError, find_input
from genoflows.testing.s3 import auth_enforced


def _touch(root, *names):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(b"x" * 10)
    return root


def test_single_gvcf_with_its_index(tmp_path):
    src = _touch(tmp_path, "NA24143_Lib3_Rep1.g.vcf.gz", "NA24143_Lib3_Rep1.g.vcf.gz.tbi", "notes.txt",
                 "NA24143_Lib3_Rep10.g.vcf.gz")
    found = find_input(str(src), "NA24143_Lib3_Rep1")
    assert found.name == "NA24143_Lib3_Rep1.g.vcf.gz" and found.is_gvcf
    assert found.index_name == "NA24143_Lib3_Rep1.g.vcf.gz.tbi" and found.size == 10


def test_ambiguous_replicates_are_listed_unless_file_names_one(tmp_path):
    src = _touch(tmp_path, "NA24143_Lib3_Rep1.g.vcf.gz", "NA24143_Lib3_Rep2.g.vcf.gz", "NA24143_Lib3_Rep2.g.vcf.gz.csi")
    with pytest.raises(SourceError) as err:
        find_input(str(src), "NA24143")
    msg = str(err.value)
    assert "2 candidate inputs" in msg and "NA24143_Lib3_Rep1.g.vcf.gz" in msg and "NA24143_Lib3_Rep2.g.vcf.gz" in msg
    assert "Pass `file`" in msg
    chosen = find_input(str(src), "NA24143", file="NA24143_Lib3_Rep2.g.vcf.gz")
    assert chosen.name == "NA24143_Lib3_Rep2.g.vcf.gz" and chosen.index_name.endswith(".csi")
    with pytest.raises(SourceError, match="'nope.vcf.gz' is not in"):
        find_input(str(src), "NA24143", file="nope.vcf.gz")


def test_nothing_found_says_what_is_there(tmp_path):
    src = _touch(tmp_path, "NA24385.bam", "NA24385.bam.bai", "HG002.vcf.gz")
    with pytest.raises(SourceError) as err:
        find_input(str(src), "NA24143_Lib3_Rep1")
    msg = str(err.value)
    assert "NA24143_Lib3_Rep1*.g.vcf.gz" in msg and "HG002.vcf.gz, NA24385.bam, NA24385.bam.bai" in msg
    with pytest.raises(SourceError, match="neither an s3://"):
        find_input(str(tmp_path / "missing"), "HG002")


def test_sv_calls_are_kept_apart_from_small_variant_calls(tmp_path):
    src = _touch(tmp_path, "HG002.g.vcf.gz", "HG002.sv.vcf.gz", "HG002_manta.vcf.gz.tbi")
    assert find_input(str(src), "HG002").name == "HG002.g.vcf.gz"
    assert find_input(str(src), "HG002", kind="sv").name == "HG002.sv.vcf.gz"


def test_s3_prefix_listing_and_access_denied(moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lab-source")
    for key in ("run42/NA24385_L1.g.vcf.gz", "run42/NA24385_L1.g.vcf.gz.tbi", "run42/sub/NA24385_L2.g.vcf.gz",
                "run43/NA24385_L3.g.vcf.gz"):
        s3.put_object(Bucket="lab-source", Key=key, Body=b"abc")
    found = find_input("s3://lab-source/run42", "NA24385", s3_client=s3)
    assert found.uri == "s3://lab-source/run42/NA24385_L1.g.vcf.gz"
    assert found.index_uri == "s3://lab-source/run42/NA24385_L1.g.vcf.gz.tbi" and found.size == 3
    with pytest.raises(SourceError, match="found there: NA24385_L1.g.vcf.gz, NA24385_L1.g.vcf.gz.tbi"):
        find_input("s3://lab-source/run42/", "NA24143", s3_client=s3)
    with auth_enforced(moto_endpoint) as (key_id, secret):
        denied = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                              aws_access_key_id=key_id, aws_secret_access_key=secret)
        with pytest.raises(PermanentFetchError, match="access denied"):
            find_input("s3://lab-source/run42", "NA24385", s3_client=denied)
