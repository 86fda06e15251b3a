"""A real S3 endpoint (moto_server): the index (round trip, Ray Data, atomic commits), and
pre-training, training and evaluation reading and writing s3:// alone."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from lightman.models.checkpoint import load_checkpoint
from lightman.models.ma2mi import load_encoder
from lightman.platform import data, index
from lightman.platform.cli import main
from lightman.tasks import storage
from lightman.tasks.schema import frames_from_row

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from toy_clips import supervised_miacnet_run, toy_index  # noqa: E402

pytestmark = pytest.mark.integration
EVAL_FILES = ("results.json", "results.csv", "predictions.csv")


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


@pytest.mark.integration
def test_pretrain_train_and_every_eval_protocol_write_and_read_s3_alone(s3_endpoint, tmp_path):
    """MA2MI pre-training to s3://, a run whose model.init is that s3:// encoder and whose
    --out is s3://, then eval (loso, megc-loso) from the S3 checkpoint to s3://: every file
    lands in the bucket, and nothing in the working folder."""
    endpoint, bucket = s3_endpoint
    toy = str(tmp_path / "index")
    toy_index(toy, "ckplus", "macro", subjects=6, per_class=3, seed=0)
    toy_index(toy, "casme2", "micro", subjects=8, per_class=2, classes=3, seed=1)
    model = ["model.image_size=16", "model.frames=6", "model.hidden=8", "model.aux_dim=8"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        pre = f"s3://{bucket}/s3-runs/ma2mi"
        assert (
            main(
                ["pretrain", "--out", pre, f"index={toy}", *model, "datasets=[ckplus]"]
                + ["steps=2", "threads=1", "holdout_fraction=0.5"]
            )
            == 0
        )
        run = f"s3://{bucket}/s3-runs/sup"
        args = supervised_miacnet_run(toy, run, *model, f"model.init={pre}/encoder.pt")
        assert main(args) == 0
        best = f"{run}/best.pt"
        for protocol, extra in (("loso", ["repeats=2"]), ("megc-loso", ["megc.epochs=1"])):
            out = f"s3://{bucket}/s3-runs/eval-{protocol}"
            command = ["eval", "--checkpoint", best, "--index", toy, "--protocol", protocol]
            assert main([*command, "--out", out, *extra]) == 0
            written = _keys(endpoint, bucket, f"s3-runs/eval-{protocol}/")
            assert {f"{out[len(f's3://{bucket}/') :]}/{f}" for f in EVAL_FILES} <= set(written)
    assert list(cwd.iterdir()) == []
    keys = set(_keys(endpoint, bucket, "s3-runs/"))
    assert {"s3-runs/ma2mi/encoder.pt", "s3-runs/ma2mi/pretrain.json"} <= keys
    assert {f"s3-runs/sup/{f}" for f in ("best.pt", "config.yaml", "results.json")} <= keys
    encoder = load_encoder(io.BytesIO(storage.read_bytes(f"{pre}/encoder.pt")))
    trained, _, meta = load_checkpoint(io.BytesIO(storage.read_bytes(best)))
    assert meta["extra"]["config"]["model"]["init"] == f"{pre}/encoder.pt"
    for k, v in encoder["state_dict"].items():  # 0 steps: the run starts from the encoder
        assert torch.equal(trained.backbone.state_dict()[k], v), k
    pre_metrics = storage.read_bytes(f"{pre}/metrics.jsonl").decode().splitlines()
    assert [json.loads(r)["step"] for r in pre_metrics] == [2]
