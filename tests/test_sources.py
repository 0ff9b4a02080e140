"""Sources: an S3 prefix served by a real moto server process on 127.0.0.1, and real GT/LQ pair folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from maskdcpt.data.photos import prepare_photos
from maskdcpt.data.shards import read_shard
from maskdcpt.data.sources import collect_real_pairs, collect_s3, parse_s3_uri, s3_client
from maskdcpt.data.pair_recipe import PAIR_COLUMNS
from maskdcpt.imageio import encode_png, write_png

FAKE_KEY, FAKE_SECRET = "AKIDTESTONLY0000", "not-a-real-secret-value-1234"


def _img(seed, h=40, w=48):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("moto server exited")
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def test_parse_uri_and_env_only_credentials(monkeypatch):
    assert parse_s3_uri("s3://my-bucket/a/b") == ("my-bucket", "a/b")
    assert parse_s3_uri("s3://my-bucket") == ("my-bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("http://x/y")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        s3_client("http://127.0.0.1:9")


def test_s3_prefix_pages_cache_and_rejection(moto_endpoint, creds, tmp_path, caplog):
    client = s3_client(moto_endpoint, max_attempts=3)
    client.create_bucket(Bucket="photos")
    n_good = 7
    for i in range(n_good):
        client.put_object(Bucket="photos", Key=f"pool/sub/img{i:02d}.png", Body=encode_png(_img(i)))
    client.put_object(Bucket="photos", Key="pool/broken.png", Body=b"\x89PNG\r\n\x1a\n garbage")
    client.put_object(Bucket="photos", Key="pool/notes.txt", Body=b"not an image")
    client.put_object(Bucket="photos", Key="other/img99.png", Body=encode_png(_img(99)))
    caplog.set_level("DEBUG", logger="maskdcpt")  # our logs (botocore's own DEBUG logs print the key id)
    cache = tmp_path / "cache"
    # page_size 3 → the 9 objects under pool/ take 3 pages
    calls = []
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    sources, rej = collect_s3("s3://photos/pool/", cache, client=client, page_size=3, benchmark_stems=["img00"])
    assert rej.empty and len(calls) == 3  # 9 listed objects, 3 per page
    assert len(sources) == n_good + 1  # .txt filtered by extension, other/ outside the prefix
    assert {s.uri for s in sources} == {f"s3://photos/pool/sub/img{i:02d}.png" for i in range(n_good)} | {
        "s3://photos/pool/broken.png"}
    assert all(os.path.isfile(s.path) and s.source == "s3" for s in sources)
    assert [s.split for s in sources if s.rel_path.endswith("img00.png")] == ["benchmark"]
    manifest, rejections = prepare_photos(sources, tmp_path / "prepared")
    assert len(manifest) == n_good and manifest.src_path.str.startswith("s3://photos/pool/").all()
    assert list(rejections.src_path) == ["s3://photos/pool/broken.png"]
    assert rejections.reason.iloc[0] in {"corrupt", "truncated", "not_an_image"}
    # credentials are never logged nor stored
    blob = manifest.to_csv() + rejections.to_csv() + caplog.text + "".join(
        p.read_text(errors="ignore") for p in cache.rglob("*.json"))
    assert FAKE_KEY not in blob and FAKE_SECRET not in blob
    # a second run downloads nothing (cache index + size/ETag) and keeps the files
    mtimes = {s.path: os.stat(s.path).st_mtime_ns for s in sources}
    again, _ = collect_s3("s3://photos/pool/", cache, client=client, page_size=3)
    assert [s.uri for s in again] == [s.uri for s in sources]
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())
    assert not list(cache.rglob("*.tmp*"))


def test_real_pairs_matching_and_rejections(tmp_path):
    gt, lq = tmp_path / "gt", tmp_path / "lq"
    for i in range(4):
        clean = _img(i)
        write_png(gt / f"p{i}.png", clean)
        write_png(lq / f"p{i}.png", np.clip(clean + 0.05, 0, 1))
    write_png(gt / "only_gt.png", _img(10))
    write_png(lq / "only_lq.png", _img(11))
    write_png(gt / "wrong.png", _img(12, 40, 48))
    write_png(lq / "wrong.png", _img(12, 40, 40))  # size mismatch: never cropped
    write_png(lq / "dup.png", _img(13))
    (lq / "dup.jpg").write_bytes((lq / "dup.png").read_bytes())
    write_png(gt / "dup.png", _img(13))
    (lq / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_png(gt / "bad.png", _img(14))
    pairs, rej = collect_real_pairs(gt, lq, "real_noise", classes=["noise", "real_noise"], out_dir=tmp_path / "out",
                                    shard_size=3)
    assert sorted(pairs.pair_id) == [f"train-real_noise-p{i}" for i in range(4)]
    assert set(PAIR_COLUMNS) <= set(pairs.columns) and (pairs.kind == "real").all()
    assert (pairs.degradation == "real_noise").all() and (pairs.class_index == 1).all()
    assert pairs.lq_differs.all() and (pairs.psnr_lq_gt < 30).all()
    reasons = dict(zip(rej.stem, rej.reason))
    assert reasons["only_gt"] == "unmatched_gt" and reasons["only_lq"] == "unmatched_lq"
    assert reasons["wrong"] == "size_mismatch" and reasons["dup"] == "duplicate_stem"
    assert reasons["bad"] in {"corrupt", "truncated", "not_an_image"}
    shards = sorted((tmp_path / "out").glob("*.tar"))
    assert [s.name for s in shards] == ["train-real_noise-00000.tar", "train-real_noise-00001.tar"]
    back = {s["key"]: s for sh in shards for s in read_shard(sh)}
    assert set(back) == set(pairs.key)
    # CSV mapping: explicit pairs, duplicate rows rejected
    pd.DataFrame({"gt": ["p0.png", "p1.png", "p1.png"], "lq": ["p1.png", "p0.png", "p0.png"]}).to_csv(
        tmp_path / "map.csv", index=False)
    mp, mrej = collect_real_pairs(gt, lq, "real_noise", mapping_csv=tmp_path / "map.csv")
    assert len(mp) == 2 and list(mrej.reason) == ["duplicate_mapping"]
    with pytest.raises(ValueError, match="kind 'real'"):
        collect_real_pairs(gt, lq, "noise")
