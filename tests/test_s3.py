"""The index on a real S3 endpoint (moto_server): round trip, Ray Data, atomic commits."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from lightman.platform import data, index
from lightman.tasks.schema import frames_from_row

pytestmark = pytest.mark.integration


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    # pyarrow leaves a marker object for a folder it creates (the index root): not data
    return sorted(
        o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")
    )


def _failing(rows, after):
    for i, r in enumerate(rows):
        if i == after:
            raise RuntimeError("worker died")
        yield r


def test_s3_round_trip_and_atomic_replace(s3_endpoint, index_rows, dataset_entry):
    endpoint, bucket = s3_endpoint
    uri = f"s3://{bucket}/round-trip/idx"
    rows = index_rows("casme2", 7) + index_rows("casme2", 2, expression="macro", seed=4)
    m = index.write_index(rows, uri, dataset_entry("casme2"), row_group_size=3)
    assert m.uri == uri

    keys = _keys(endpoint, bucket, "round-trip/idx/")
    assert keys == sorted(
        ["round-trip/idx/manifest.json"] + [f"round-trip/idx/{f}" for f in m.files]
    )
    assert all("/dataset=casme2/expression=" in f for f in m.files)
    assert index.index_files(uri) == [f"{uri}/{f}" for f in m.files]

    got = {r["clip_id"]: r for r in index.read_table(uri).to_pylist()}
    assert got.keys() == {r["clip_id"] for r in rows}
    for r in rows:
        assert got[r["clip_id"]] == r
    manifest_before = index.read_manifest(uri)

    with pytest.raises(RuntimeError, match="worker died"):
        index.write_index(
            _failing(index_rows("casme2", 9, seed=1), 7),
            uri,
            dataset_entry("casme2"),
            row_group_size=3,
        )
    assert index.read_manifest(uri) == manifest_before
    assert _keys(endpoint, bucket, "round-trip/idx/") == keys  # the failed version was removed

    m2 = index.write_index(
        index_rows("ckplus", 3, expression="macro"), uri, dataset_entry("ckplus")
    )
    m3 = index.write_index(index_rows("casme2", 4, seed=9), uri, dataset_entry("casme2"))
    assert m3.datasets == ("casme2", "ckplus") and m3.entry("ckplus") == m2.entry("ckplus")
    assert _keys(endpoint, bucket, "round-trip/idx/") == sorted(
        ["round-trip/idx/manifest.json"] + [f"round-trip/idx/{f}" for f in m3.files]
    )  # casme2's previous version was collected


def test_s3_read_through_ray_data(s3_endpoint, ray_local, index_rows, dataset_entry):
    _, bucket = s3_endpoint
    uri = f"s3://{bucket}/ray/idx"
    rows = index_rows("casme2", 9, subjects=3)
    index.write_index(rows, uri, dataset_entry("casme2"), row_group_size=4)
    ds = data.read_dataset(uri, subjects=["casme2/s01"])
    got = {r["clip_id"]: r for r in ds.take_all()}
    want = {r["clip_id"]: r for r in rows if r["subject"] == "casme2/s01"}
    assert got.keys() == want.keys() and len(got) == 3
    for cid, r in want.items():
        np.testing.assert_array_equal(frames_from_row(got[cid]), frames_from_row(r))
    assert data.read_dataset(uri).count() == 9
