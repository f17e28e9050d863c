"""genoflows.giab.publish against moto in server mode: a finished GIAB run goes to S3 verified, its manifest
last and only if absent, so finished work on S3 is never overwritten."""

from __future__ import annotations

import json

import boto3
import pytest

from genoflows.fetch import PermanentFetchError, TransientFetchError
from genoflows.giab.publish import MANIFEST, RemoteRun, scratch_dir

BUCKET = "giab-publish"


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    return client


def _run_dir(root, text="sample,metric,value\nx,recall,0.99\n"):
    run = root / "run-abc"
    (run / "bcftools" / "work").mkdir(parents=True)
    (run / "metrics.csv").write_text(text)
    (run / "run.json").write_text('{"key": "abc"}\n')
    (run / "bcftools" / "summary.csv").write_text("a,b\n1,2\n")
    (run / "bcftools" / "work" / "scratch.vcf").write_text("not published\n")
    return run


def _objects(s3, prefix):
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}


def test_a_run_goes_up_verified_and_is_never_overwritten(s3, tmp_path):
    remote = RemoteRun.of(f"s3://{BUCKET}/out", "S1", "abc", s3)
    assert remote.finished() is None
    manifest, wrote = remote.upload(_run_dir(tmp_path / "a"), "abc")
    assert wrote and set(manifest["files"]) == {"metrics.csv", "run.json", "bcftools/summary.csv"}
    stored = _objects(s3, "out/S1/run-abc/")
    assert set(stored) == {f"out/S1/run-abc/{f}" for f in (*manifest["files"], MANIFEST)}
    assert remote.finished()["files"] == manifest["files"]
    # the same key again (another machine, different bytes): the finished run stands, nothing is written
    again, wrote = remote.upload(_run_dir(tmp_path / "b", text="other\n"), "abc")
    assert not wrote and again["files"] == manifest["files"] and _objects(s3, "out/S1/run-abc/") == stored


def test_a_concurrent_run_that_finishes_first_keeps_its_manifest(s3, tmp_path, monkeypatch):
    remote = RemoteRun.of(f"s3://{BUCKET}/race", "S1", "abc", s3)
    theirs = {"key": "abc", "files": {"metrics.csv": {"size": 1, "sha256": "0" * 64}}}
    real_finished = RemoteRun.finished
    calls = []

    def finished_then_they_win(self):  # our check sees nothing; the other run's manifest lands right after
        calls.append(1)
        if len(calls) == 1:
            s3.put_object(Bucket=BUCKET, Key=f"race/S1/run-abc/{MANIFEST}", Body=json.dumps(theirs).encode())
            return None
        return real_finished(self)

    monkeypatch.setattr(RemoteRun, "finished", finished_then_they_win)
    manifest, wrote = remote.upload(_run_dir(tmp_path), "abc")
    assert not wrote and manifest == theirs  # If-None-Match: * refused ours
    body = s3.get_object(Bucket=BUCKET, Key=f"race/S1/run-abc/{MANIFEST}")["Body"].read()
    assert json.loads(body) == theirs


def test_an_interrupted_upload_is_completed_and_a_bad_manifest_is_named(s3, tmp_path):
    remote = RemoteRun.of(f"s3://{BUCKET}/killed", "S1", "abc", s3)
    s3.put_object(Bucket=BUCKET, Key="killed/S1/run-abc/metrics.csv", Body=b"half")  # data, no manifest
    assert remote.finished() is None
    manifest, wrote = remote.upload(_run_dir(tmp_path), "abc")
    assert wrote
    assert s3.get_object(Bucket=BUCKET, Key="killed/S1/run-abc/metrics.csv")["Body"].read().startswith(b"sample,")
    s3.put_object(Bucket=BUCKET, Key=f"bad/S1/run-abc/{MANIFEST}", Body=b"[]")
    with pytest.raises(PermanentFetchError, match="delete it and rerun"):
        RemoteRun.of(f"s3://{BUCKET}/bad", "S1", "abc", s3).finished()


def test_s3_errors_are_classified_for_the_retry_policy(s3, tmp_path):
    with pytest.raises(PermanentFetchError, match="no such object|NoSuchBucket"):
        RemoteRun.of("s3://no-such-giab-bucket/out", "S1", "abc", s3).upload(_run_dir(tmp_path), "abc")

    class Truncating:  # a body cut short on the way (AWS S3 would also refuse it by Content-MD5: BadDigest;
        def __getattr__(self, name):  # moto 5.2.5 does not check Content-MD5, the stored size does)
            return getattr(s3, name)

        def put_object(self, **kw):
            return s3.put_object(**{**kw, "Body": kw["Body"].read()[:-1]})

    with pytest.raises(TransientFetchError, match="stored .* bytes, uploaded"):
        RemoteRun.of(f"s3://{BUCKET}/garbled", "S1", "abc", Truncating()).upload(_run_dir(tmp_path / "g"), "abc")
    assert RemoteRun.of(f"s3://{BUCKET}/garbled", "S1", "abc", s3).finished() is None


def test_scratch_dir_is_per_prefix_and_needs_a_bucket(tmp_path):
    assert scratch_dir("s3://b/x", tmp_path) == scratch_dir("s3://b/x/", tmp_path) != scratch_dir("s3://b/y", tmp_path)
    with pytest.raises(PermanentFetchError, match="expected s3://bucket"):  # before any work, not retried
        scratch_dir("s3://", tmp_path)
