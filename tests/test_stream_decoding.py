"""The streaming loader's decoding (maskdcpt.data.stream, maskdcpt.data.sample_ops): 0 and 1 workers give the
same batches, the decoded-sample cache changes no batch, and 16-bit, grey and mixed members decode exactly."""
from __future__ import annotations

import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from test_stream import _take, make_shards

from maskdcpt.data.shards import write_shard
from maskdcpt.data.stream import ShardIndex, StreamLoader


def test_zero_workers_and_one_worker_give_the_same_batches(tmp_path):
    """Decoding in the training process (0 workers) or in one worker process makes no difference to the batches:
    both read one slot per rank, so switching ``data.num_workers`` between 0 and 1 changes no result. Over two
    epochs (41 samples each), augmentation included."""
    index = ShardIndex.from_manifest(make_shards(tmp_path / "pairs", repeat={1: 2}), tmp_path / "pairs", "train")

    def run(workers):
        loader = StreamLoader(index, batch_size=3, seed=7, num_workers=workers, shuffle_buffer=6, fields=None)
        return _take(loader, 30)

    zero, one = run(0), run(1)
    assert [b["keys"] for b in zero] == [b["keys"] for b in one]
    assert [b["epochs"] for b in zero] == [b["epochs"] for b in one] and zero[-1]["epochs"][-1] == 2
    for a, b in zip(zero, one):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"]) and torch.equal(a["labels"],
                                                                                               b["labels"])
    two = run(2)  # two slots: a different (equally valid) order, so the test can tell the settings apart
    assert [b["keys"] for b in two] != [b["keys"] for b in zero]


def test_decoded_sample_cache_changes_no_batch_and_decodes_each_sample_once(tmp_path, monkeypatch):
    """``cache_mb``: later epochs take decoded samples from memory (each of the 34 decoded once over three epochs
    when the cache holds them all), a cache too small for all holds what fits and decodes the rest again, and
    the batches (order, augmentation, values) are those of no cache at all."""
    import maskdcpt.data.stream as stream_mod

    index = ShardIndex.from_manifest(make_shards(tmp_path / "pairs"), tmp_path / "pairs", "train")
    assert index.num_samples == 34
    calls = Counter()
    real = stream_mod.decode_member

    def counting(loc, key, data, part, **kw):
        calls[key] += 1
        return real(loc, key, data, part, **kw)

    monkeypatch.setattr(stream_mod, "decode_member", counting)
    per_sample = 2 * 16 * 16 * 3  # LQ + GT codes of a 16 px sample, uint8

    def run(cache_mb):
        calls.clear()
        loader = StreamLoader(index, batch_size=3, seed=2, shuffle_buffer=5, fields=None, cache_mb=cache_mb)
        return _take(loader, 34), sum(calls.values())  # 102 samples = 3 epochs of 34

    plain, n_plain = run(0)
    full, n_full = run(1.0)
    small, n_small = run(10 * per_sample / 2**20)  # room for 10 samples
    assert n_plain == 2 * 102 and n_full == 2 * 34
    assert n_small == 2 * (34 + 2 * 24)  # the 10 kept are decoded once, the other 24 in every epoch
    for other in (full, small):
        assert [b["keys"] for b in other] == [b["keys"] for b in plain]
        for a, b in zip(plain, other):
            assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    with pytest.raises(ValueError, match="cache_mb"):
        StreamLoader(index, batch_size=3, seed=2, cache_mb=-1)


def test_16_bit_grey_and_mixed_batches_stream_as_decode_png_reads_them(tmp_path):
    """The loader decodes to integer codes and scales batch-wise: 16-bit members keep 16-bit precision (v/65535,
    not rounded to 8 bits), a grey PNG is repeated to RGB, and a batch mixing 8- and 16-bit samples is exact."""
    from maskdcpt.data.shards import _add
    from maskdcpt.png import decode_png, encode_png

    rng = np.random.default_rng(3)
    folder = tmp_path / "mixed"
    folder.mkdir()
    rows, expected = [], {}
    for s, bits in enumerate((8, 16)):
        samples = []
        for i in range(3):
            key = f"train-b{bits}-{i}"
            gt = rng.random((12, 12, 3), dtype=np.float32)
            samples.append({"key": key, "gt": gt, "lq": gt * 0.5, "meta": {}})
            rows.append({"split": "train", "shard": f"train-{s:05d}.tar", "key": key, "class_index": i})
        write_shard(folder / f"train-{s:05d}.tar", samples, lq_bit_depth=bits, gt_bit_depth=bits)
    grey_lq = rng.random((12, 12), dtype=np.float32)  # a hand-made shard: grey 16-bit LQ, 8-bit RGB GT
    grey = {"lq": encode_png(grey_lq, bit_depth=16), "gt": encode_png(rng.random((12, 12, 3), dtype=np.float32))}
    with tarfile.open(folder / "train-00002.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "train-grey-0.lq.png", grey["lq"])
        _add(tar, "train-grey-0.gt.png", grey["gt"])
        _add(tar, "train-grey-0.json", b"{}")
    rows.append({"split": "train", "shard": "train-00002.tar", "key": "train-grey-0", "class_index": 0})
    for f in sorted(folder.glob("*.tar")):
        with tarfile.open(f) as tar:
            for m in tar.getmembers():
                key, _, part = m.name.partition(".")
                if part.endswith("png"):
                    img = decode_png(tar.extractfile(m).read())
                    expected[(key, part[:2])] = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
    index = ShardIndex.from_manifest(pd.DataFrame(rows), folder, "train")
    loader = StreamLoader(index, batch_size=7, seed=0, shuffle=False, augment=False, fields=None, epochs=1)
    (batch,) = list(loader)
    assert batch["lq"].dtype == torch.float32 and len(batch["keys"]) == 7
    for i, key in enumerate(batch["keys"]):
        for part in ("lq", "gt"):
            np.testing.assert_array_equal(batch[part][i].permute(1, 2, 0).numpy(), expected[(key, part)])
    sixteen = batch["gt"][3].numpy() * 65535  # 16-bit codes survive: not multiples of 257 (an 8-bit value)
    assert np.any(np.round(sixteen) % 257 != 0)
    assert torch.equal(batch["lq"][6][0], batch["lq"][6][1])  # grey repeated
