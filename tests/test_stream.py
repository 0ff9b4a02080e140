"""The streaming training loader (maskdcpt.data.stream): epoch coverage across ranks and workers, deterministic
order, exact resume, bad data, S3 on a real moto server, and the paper-5d training sets' shards."""
from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskdcpt.data.shards import write_shard
from maskdcpt.data.stream import BadSampleError, ShardIndex, StreamLoader, emission_order, iter_batches, iter_samples



def make_shards(folder: Path, n_shards: int = 5, per_shard: int = 7, size: int = 16, split: str = "train",
                repeat: dict[int, int] | None = None, seed: int = 0) -> pd.DataFrame:
    """``n_shards`` shards of ``per_shard`` random pairs (the last shard one shorter); returns their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_shards):
        name = f"{split}-{s:05d}.tar"
        samples = []
        for i in range(per_shard - (s == n_shards - 1)):
            key = f"{split}-s{s}-i{i}"
            gt = rng.random((size, size, 3), dtype=np.float32)
            samples.append({"key": key, "gt": gt, "lq": np.clip(gt * 0.5, 0, 1), "meta": {"i": i}})
            rows.append({"split": split, "shard": name, "key": key, "class_index": (s + i) % 5,
                         "repeat": (repeat or {}).get(s, 1)})
        write_shard(folder / name, samples)
    return pd.DataFrame(rows)


@pytest.fixture
def shards(tmp_path):
    manifest = make_shards(tmp_path / "pairs", repeat={1: 2})
    return ShardIndex.from_manifest(manifest, tmp_path / "pairs", "train"), manifest


def _take(loader: StreamLoader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shards, world, workers):
    index, _ = shards
    epoch_keys: dict[int, Counter] = {0: Counter(), 1: Counter()}
    per_rank = []
    for rank in range(world):
        loader = StreamLoader(index, batch_size=3, seed=11, rank=rank, world=world, num_workers=workers,
                              shuffle_buffer=4, fields=None)
        n_batches = loader.epoch_length()  # three epochs: workers with longer slots lag behind
        seen = Counter()
        for batch in _take(loader, n_batches):
            assert batch["lq"].shape == (3, 3, 16, 16) and batch["lq"].dtype == torch.float32
            for key, epoch in zip(batch["keys"], batch["epochs"]):
                epoch_keys.setdefault(epoch, Counter())[key] += 1
                if epoch == 0:
                    seen[key] += 1
        per_rank.append(seen)
    expected = Counter(index.all_keys())
    assert index.num_samples == 34 + 7  # shard 1 counts twice
    assert epoch_keys[0] == expected and epoch_keys[1] == expected
    for a in range(world):  # disjoint across ranks (a repeated shard's copies may land on two ranks)
        for b in range(a + 1, world):
            assert not set(per_rank[a]) & set(per_rank[b]) - {k for k in expected if expected[k] > 1}


def test_order_depends_on_seed_and_epoch_only(shards):
    index, _ = shards

    def keys(seed, workers=0):
        loader = StreamLoader(index, batch_size=4, seed=seed, num_workers=workers, shuffle_buffer=8, fields=None)
        return [(k, e) for b in _take(loader, 20) for k, e in zip(b["keys"], b["epochs"])]

    a, b, c = keys(1), keys(1), keys(2)
    assert a == b and a != c
    e0 = [k for k, e in a if e == 0]
    e1 = [k for k, e in a if e == 1][:len(e0)]
    assert sorted(e0) == sorted(index.all_keys()) and e0 != e1  # reshuffled each epoch
    assert e0 != sorted(e0, key=lambda k: index.all_keys().index(k))  # not the stored order
    # augmentations differ per sample and are reproducible
    l1 = StreamLoader(index, batch_size=4, seed=1, shuffle_buffer=8)
    l2 = StreamLoader(index, batch_size=4, seed=1, shuffle_buffer=8)
    for (x1, y1, c1), (x2, y2, c2) in zip(_take(l1, 3), _take(l2, 3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(c1, c2)


def test_batches_match_the_stored_pairs(shards, tmp_path):
    """Without augmentation a streamed batch is exactly the decoded shard content (labels from the manifest)."""
    index, manifest = shards
    from maskdcpt.data.shards import read_shard

    stored = {s["key"]: s for f in sorted((tmp_path / "pairs").glob("*.tar")) for s in read_shard(f)}
    label = dict(zip(manifest["key"], manifest["class_index"]))
    loader = StreamLoader(index, batch_size=5, seed=3, shuffle_buffer=6, augment=False, fields=None)
    for batch in _take(loader, 6):
        for i, key in enumerate(batch["keys"]):
            np.testing.assert_array_equal(batch["lq"][i].permute(1, 2, 0).numpy(), stored[key]["lq"])
            np.testing.assert_array_equal(batch["gt"][i].permute(1, 2, 0).numpy(), stored[key]["gt"])
            assert int(batch["labels"][i]) == label[key]
    aug = StreamLoader(index, batch_size=5, seed=3, shuffle_buffer=6, augment=True, fields=None)
    flipped = 0
    for batch in _take(aug, 6):
        for i, key in enumerate(batch["keys"]):
            lq, gt = batch["lq"][i], batch["gt"][i]
            ref_lq = torch.from_numpy(stored[key]["lq"]).permute(2, 0, 1)
            ref_gt = torch.from_numpy(stored[key]["gt"]).permute(2, 0, 1)
            # LQ and GT get the same flip/rotation: find it on the GT, check it on the LQ
            found = [(f, r) for f in (0, 1) for r in range(4)
                     if torch.equal(torch.rot90(ref_gt.flip(-1) if f else ref_gt, r, (-2, -1)), gt)]
            assert found, key
            f, r = found[0]
            assert torch.equal(torch.rot90(ref_lq.flip(-1) if f else ref_lq, r, (-2, -1)), lq)
            flipped += (f, r) != (0, 0)
    assert flipped > 5


def test_emission_order_is_a_bounded_permutation():
    order = emission_order(100, 10, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(100)) and order.tolist() != list(range(100))
    assert all(p < t + 10 for t, p in enumerate(order))
    assert emission_order(5, 0, None).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_sequence(shards, workers):
    """A position saved after k batches (mid-epoch and later across the epoch end) makes a fresh loader yield
    exactly the batches an uninterrupted loader yields next."""
    index, _ = shards

    def new():
        return StreamLoader(index, batch_size=3, seed=5, num_workers=workers, shuffle_buffer=5, fields=None)

    full = _take(new(), 24)
    for k in (5, 13):  # 13 x 3 = 39 crosses the 41-sample epoch
        first = new()
        _take(first, k)
        state = first.state_dict()
        assert state["batches"] == k and state["num_workers"] == workers
        resumed = new()
        resumed.load_state_dict(state)
        rest = _take(resumed, 24 - k)
        for a, b in zip(full[k:], rest):
            assert a["keys"] == b["keys"] and a["epochs"] == b["epochs"]
            assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    # 39 samples consumed; with 2 workers (slots of 20 and 21) worker 0 has begun epoch 1 with one of them
    assert state["epoch"] == 0 and state["samples_consumed"] == 39
    assert state["samples_in_epoch"] == (39 if workers == 0 else 38)
    # the classic bug is refused: restoring while the workers already prefetch from the old position
    loader = new()
    it = iter(loader)
    next(it)
    with pytest.raises(RuntimeError, match="already iterating"):
        loader.load_state_dict(state)
    it.close()
    other = StreamLoader(index, batch_size=4, seed=5, num_workers=workers, shuffle_buffer=5)
    with pytest.raises(ValueError, match="batch_size=3"):
        other.load_state_dict(state)


def test_validation_pass_is_ordered_and_finite(shards):
    index, manifest = shards
    batches = list(iter_batches(index, 4, fields=None))
    keys = [k for b in batches for k in b["keys"]]
    assert keys == index.all_keys() and len(batches) == -(-len(keys) // 4)
    assert [len(b["keys"]) for b in batches][-1] == len(keys) % 4 or len(keys) % 4 == 0
    assert [s["key"] for s in iter_samples(index)] == [k for s in index.shards for k in s.keys]


def test_invalid_settings_are_refused(shards):
    index, manifest = shards
    with pytest.raises(ValueError, match="on_bad_sample"):
        StreamLoader(index, batch_size=2, seed=0, on_bad_sample="ignore")
    with pytest.raises(ValueError, match="rank 2 outside"):
        StreamLoader(index, batch_size=2, seed=0, rank=2, world=2)
    with pytest.raises(ValueError, match="no pairs for split 'val'"):
        ShardIndex.from_manifest(manifest, "x", "val")
    bad = manifest.copy()
    bad.loc[0, "repeat"] = 3
    with pytest.raises(ValueError, match="different repeat"):
        ShardIndex.from_manifest(bad, "x", "train")


# ------------------------------------------------------------------------------------------------ bad data
def _rewrite(path: Path, mutate) -> None:
    """Rewrite a tar shard, letting ``mutate(name, data)`` replace a member's bytes."""
    buf = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src.getmembers():
            data = mutate(m.name, src.extractfile(m).read())
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _drain(loader):
    return [k for b in loader for k in b["keys"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_data_errors_name_shard_and_key_or_are_skipped_and_counted(tmp_path, workers):
    manifest = make_shards(tmp_path / "p", n_shards=4, per_shard=6)
    index = ShardIndex.from_manifest(manifest, tmp_path / "p", "train")

    def loader(mode):
        return StreamLoader(index, batch_size=2, seed=0, num_workers=workers, shuffle_buffer=3, epochs=1,
                            on_bad_sample=mode, fields=None, timeout=60)

    good = sorted(_drain(loader("error")))
    # corrupt PNG member
    _rewrite(tmp_path / "p" / "train-00001.tar",
             lambda n, d: b"\x89PNG\r\n\x1a\nnot really" if n == "train-s1-i2.lq.png" else d)
    with pytest.raises(BadSampleError, match=r"train-00001\.tar: key 'train-s1-i2': corrupt lq\.png"):
        _drain(loader("error"))
    skip = loader("skip")
    assert sorted(_drain(skip)) == [k for k in good if k != "train-s1-i2"] and skip.skipped == 1
    make_shards(tmp_path / "p", n_shards=4, per_shard=6)  # undamaged again
    # truncated shard: cut in the middle of its fourth sample
    path = tmp_path / "p" / "train-00002.tar"
    data = path.read_bytes()
    with tarfile.open(path) as t:
        cut = next(m for m in t.getmembers() if m.name == "train-s2-i3.gt.png").offset_data + 10
    path.write_bytes(data[:cut])
    with pytest.raises(BadSampleError, match=r"train-00002\.tar.*(train-s2-i3|truncated)"):
        _drain(loader("error"))
    skip = loader("skip")
    kept = sorted(_drain(skip))
    assert kept == sorted(set(good) - {f"train-s2-i{i}" for i in range(3, 6)})
    assert skip.skipped == 3 and sum(skip.state_dict()["skipped"]) == 3
    make_shards(tmp_path / "p", n_shards=4, per_shard=6)
    # a shard missing altogether
    (tmp_path / "p" / "train-00003.tar").unlink()
    with pytest.raises(BadSampleError, match=r"train-00003\.tar is missing \(first key 'train-s3-i0'\)"):
        _drain(loader("error"))
    skip = loader("skip")
    assert len(_drain(skip)) == len(good) - 5 and skip.skipped == 5


def test_shard_out_of_step_with_manifest_is_an_error(tmp_path):
    manifest = make_shards(tmp_path / "p", n_shards=2, per_shard=4)
    manifest.loc[manifest.key == "train-s0-i1", "key"] = "train-s0-other"
    index = ShardIndex.from_manifest(manifest, tmp_path / "p", "train")
    with pytest.raises(BadSampleError, match=r"train-00000\.tar: member key 'train-s0-i1'.*'train-s0-other'"):
        _drain(StreamLoader(index, batch_size=2, seed=0, epochs=1, fields=None, shuffle=False))


# ------------------------------------------------------------------------------------------ S3 on moto
@pytest.mark.parametrize("workers", [0, 2])
def test_streams_from_s3_on_moto_like_the_local_folder(tmp_path, moto, workers):
    from maskdcpt.data.sources import s3_client

    manifest = make_shards(tmp_path / "p", n_shards=3, per_shard=5)
    client = s3_client(moto.url)
    bucket = f"shards-{workers}"
    client.create_bucket(Bucket=bucket)
    for f in sorted((tmp_path / "p").glob("*.tar")):
        client.upload_file(str(f), bucket, f"runs/a/{f.name}")
    local = ShardIndex.from_manifest(manifest, tmp_path / "p", "train")
    remote = ShardIndex.from_manifest(manifest, f"s3://{bucket}/runs/a", "train", s3_endpoint_url=moto.url)
    kw = dict(batch_size=3, seed=4, num_workers=workers, shuffle_buffer=4, fields=None)
    for a, b in zip(_take(StreamLoader(local, **kw), 8), _take(StreamLoader(remote, **kw), 8)):
        assert a["keys"] == b["keys"] and torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    client.delete_object(Bucket=bucket, Key="runs/a/train-00001.tar")
    with pytest.raises(BadSampleError, match=rf"s3://{bucket}/runs/a/train-00001\.tar: S3 object unavailable"):
        _drain(StreamLoader(remote, **{**kw, "fields": None}, epochs=1))
    skip = StreamLoader(remote, **kw, epochs=1, on_bad_sample="skip")
    assert len(_drain(skip)) == 14 - 5 and skip.skipped == 5


def test_transient_s3_errors_are_retried(tmp_path, moto):
    """A proxy on 127.0.0.1 in front of moto answers the first GETs of each object with 503: the stream retries
    (botocore standard mode, exponential backoff) and yields the same batches."""
    import http.server
    import threading
    import urllib.request

    from maskdcpt.data.sources import s3_client

    manifest = make_shards(tmp_path / "p", n_shards=2, per_shard=4)
    client = s3_client(moto.url)
    client.create_bucket(Bucket="flaky")
    for f in sorted((tmp_path / "p").glob("*.tar")):
        client.upload_file(str(f), "flaky", f.name)
    failures: Counter = Counter()

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if failures[self.path] < 2:
                failures[self.path] += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = urllib.request.Request(moto.url + self.path, headers={k: v for k, v in self.headers.items()
                                                                            if k.lower() != "host"})
            req.add_header("Host", moto.url.split("//")[1])
            with urllib.request.urlopen(req) as r:
                body = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        index = ShardIndex.from_manifest(manifest, "s3://flaky", "train", s3_endpoint_url=url)
        keys = _drain(StreamLoader(index, batch_size=2, seed=0, epochs=1, fields=None))
        assert sorted(keys) == sorted(manifest["key"])
        assert sum(failures.values()) == 4  # two 503s for each of the two shards, then success
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------- paper-5d training sets
def test_paper_training_sets_stream_through_the_same_loader(tmp_path):
    """The preset's real training sets (here a tiny rain + GT-only noise layout, ``mode: whole`` with repeat
    counts) become shards that the stream crops and repeats: each pair ``repeat`` times per epoch."""
    from maskdcpt.data.testsets import training_pairs
    from test_test_sets import make_gt_only, make_rain100l

    root = tmp_path / "train"
    make_rain100l(root / "Rain200L")
    make_gt_only(root / "BSD400", n=3)
    preset = {"seed": 7, "task": {"name": "5d", "classes": []},
              "training_sets": {"root": str(root), "mode": "whole", "crop": 32, "sets": {
                  "rain200l": {"layout": "rain100l", "path": "Rain200L", "class": "rain", "repeat": 3},
                  "bsd400": {"layout": "cbsd68", "path": "BSD400", "class": "gaussian_noise", "repeat": 2}}}}
    manifest, _ = training_pairs(preset, tmp_path / "shards")
    index = ShardIndex.from_manifest(manifest, tmp_path / "shards", "train")
    assert index.num_samples == 2 * 3 + 3 * 2
    loader = StreamLoader(index, batch_size=4, seed=0, crop=32, num_workers=2, shuffle_buffer=4, fields=None,
                          epochs=1)
    batches = list(loader)
    assert all(b["lq"].shape[-2:] == (32, 32) for b in batches)
    assert Counter(k for b in batches for k in b["keys"]) == Counter(index.all_keys())
    labels = dict(zip(manifest.key, manifest.class_index))
    assert all(int(lab) == labels[k] for b in batches for k, lab in zip(b["keys"], b["labels"]))


def test_split_pairs_and_params_loader(shards, tmp_path):
    """The evaluate stage's benchmark stream (re-iterable, one pair at a time, manifest fields kept) and the
    training loader built from the ``data`` params group (defaults filled in, another shard location)."""
    from maskdcpt.data.shards import read_shard
    from maskdcpt.data.stream import SplitPairs, train_loader
    from pipelines.params import DataParams

    index, manifest = shards
    manifest = manifest.assign(pair_id=manifest["key"] + "-p")
    defaults = DataParams().model_dump()
    pairs = SplitPairs(manifest, tmp_path / "pairs", "train", defaults)
    stored = {s["key"]: s for f in sorted((tmp_path / "pairs").glob("*.tar")) for s in read_shard(f)}
    first = list(pairs)
    assert len(pairs) == len(first) == len(stored) and [p["key"] for p in first] == [p["key"] for p in pairs]
    for p in first:
        assert p["pair_id"] == p["key"] + "-p"
        np.testing.assert_array_equal(p["lq"], stored[p["key"]]["lq"])
    loader = train_loader(manifest, tmp_path / "elsewhere",
                          {**defaults, "shards": str(tmp_path / "pairs"), "num_workers": 0},
                          batch_size=4, seed=1, crop=8)
    lq, gt, labels = next(iter(loader))
    assert lq.shape == (4, 3, 8, 8) and labels.dtype == torch.int64 and loader.shuffle_buffer == 256
