"""Weights verified before they are loaded: one flipped byte in a registered champion, a pre-trained backbone or
a pipeline checkpoint is a clear checksum error naming what was loaded, never a silent restore."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from conftest import use_store
from maskdcpt.cli import main
from maskdcpt.integrity import (ChecksumError, file_sha256, verify_if_recorded, verify_sidecar, weight_files,
                                write_sidecar)
from maskdcpt.models import build_nafnet

NAME = "maskdcpt-nafnet-5d"


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte in the middle of ``path`` (inside the tensor data of a torch file of this size)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _save_net(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_nafnet("tiny")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.2)
    sd = net.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": sd, "params_ema": sd, "meta": {"arch": "nafnet", "preset": "tiny"}}, path)
    return path


def test_sidecar_catches_one_flipped_byte(tmp_path):
    ckpt = _save_net(tmp_path / "m" / "model.pt")
    record = write_sidecar(ckpt.parent, ["model.pt"])
    assert record == {"model.pt": file_sha256(ckpt)}
    assert verify_sidecar(ckpt) == record["model.pt"] and verify_if_recorded(ckpt)
    flip_byte(ckpt)
    with pytest.raises(ChecksumError, match="checksum mismatch .*model.pt"):
        verify_sidecar(ckpt)
    with pytest.raises(ChecksumError):
        verify_if_recorded(ckpt)
    # a release file with no record is not verified (and says so); a folder record that omits it is an error only
    # where verification is required
    other = _save_net(tmp_path / "release" / "nafnet.pth")
    assert verify_if_recorded(other) is False
    with pytest.raises(ChecksumError, match="no sha256.json"):
        verify_sidecar(other)
    (other.parent / "sha256.json").write_text("{not json")
    with pytest.raises(ChecksumError, match="unreadable"):
        verify_if_recorded(other)


def test_load_model_of_a_tampered_pipeline_checkpoint_fails(tmp_path, capsys):
    from maskdcpt.inference import load_model

    ckpt = _save_net(tmp_path / "models" / "model.pt")
    write_sidecar(ckpt.parent, ["model.pt"])
    assert load_model(ckpt, device="cpu").maskdcpt_info["weights_verified"] is True
    flip_byte(ckpt)
    with pytest.raises(ChecksumError):
        load_model(ckpt, device="cpu")
    photo = tmp_path / "photo.png"
    Image.fromarray(skdata.chelsea()[:40, :48]).save(photo)
    code = main(["restore", str(photo), "-o", str(tmp_path / "out"), "--model", str(ckpt), "--device", "cpu"])
    assert code == 1 and "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out" / "photo.png").exists()


def test_finetune_refuses_a_tampered_pretrained_backbone(tmp_path):
    from maskdcpt.data.pairs import PairSet
    from maskdcpt.train.finetune import run_finetune

    pre = tmp_path / "pretrain"
    torch.manual_seed(0)
    backbone = build_nafnet("tiny").state_dict()
    pre.mkdir()
    torch.save({"params": backbone, "meta": {"arch": "nafnet", "preset": "tiny"}}, pre / "backbone.pt")
    write_sidecar(pre, ["backbone.pt"])
    flip_byte(pre / "backbone.pt")
    pairs = PairSet(lq=torch.rand(4, 3, 32, 32), gt=torch.rand(4, 3, 32, 32), labels=torch.zeros(4, dtype=torch.long),
                    rows=pd.DataFrame({"i": range(4)}))
    cfg = {"steps": 1, "batch_size": 2, "lr": 1e-4, "log_every": 1, "checkpoint_every": 0}
    with pytest.raises(ChecksumError, match="backbone.pt"):
        run_finetune(pairs, model_cfg={"arch": "nafnet", "preset": "tiny"}, cfg=cfg, ds_params={}, seed=0,
                     out_dir=tmp_path / "ft", init="pretrained", pretrained=pre / "backbone.pt", progress=False)
    assert not (tmp_path / "ft" / "model.pt").exists()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A real SQLite MLflow store with version 1 of ``NAME`` logged and recorded as the register stage does
    (``log_pyfunc_model`` + ``record_weights``), alias ``champion``."""
    from maskdcpt.serving import log_pyfunc_model
    from pipelines.registry import record_weights

    uri = use_store(tmp_path / "mlflow.db", "integrity-test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ckpt = _save_net(tmp_path / "ft" / "model.pt")
    log_pyfunc_model(ckpt, registered_model_name=NAME)
    client = mlflow.MlflowClient()
    files = record_weights(client, NAME, "1", source=ckpt)
    client.set_registered_model_alias(NAME, "champion", "1")
    stored = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file() and file_sha256(p) == file_sha256(ckpt)]
    assert len(stored) == 1, "the registry should hold exactly one copy of the checkpoint"
    yield {"client": client, "ckpt": ckpt, "stored": stored[0], "files": files, "tmp": tmp_path}
    mlflow.set_tracking_uri(None)


def test_registry_records_the_stored_weights(registry):
    tag = json.loads(registry["client"].get_model_version(NAME, "1").tags["weights_sha256"])
    assert tag == registry["files"] and list(tag.values()) == [file_sha256(registry["ckpt"])]
    from maskdcpt.inference import load_model

    net = load_model(f"models:/{NAME}@champion", device="cpu")
    assert net.maskdcpt_info["weights_verified"] is True


def test_flipped_byte_in_the_champion_fails_restore_naming_the_version(registry, capsys):
    """The issue's reproduction: one byte of the champion's weight file under the artifact store, then
    ``maskdcpt restore photo.png`` with the default model."""
    photo = registry["tmp"] / "photo.png"
    Image.fromarray(skdata.chelsea()[:40, :48]).save(photo)
    out = registry["tmp"] / "out"
    assert main(["restore", str(photo), "-o", str(out), "--device", "cpu"]) == 0   # intact: restores
    flip_byte(registry["stored"])
    out2 = registry["tmp"] / "out2"
    assert main(["restore", str(photo), "-o", str(out2), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and f"registered model {NAME} version 1" in err, err[-2000:]
    assert not out2.exists() or not any(out2.iterdir())


def test_pyfunc_load_and_serving_verify_the_checkpoint_artifact(registry):
    """``mlflow.pyfunc.load_model`` (what ``mlflow models serve`` calls) checks the artifact against the SHA-256
    in the model's config, whether or not the registry tag is consulted."""
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    x = np.random.default_rng(0).random((1, 24, 24, 3), dtype=np.float32)
    assert model.predict(x).shape == x.shape
    flip_byte(registry["stored"])
    with pytest.raises(ChecksumError, match="checkpoint artifact"):
        mlflow.pyfunc.load_model(f"models:/{NAME}/1")


def test_gate_rescore_of_a_tampered_champion_fails(registry):
    from pipelines.registry import load_registered_network

    assert load_registered_network(f"models:/{NAME}@champion") is not None
    flip_byte(registry["stored"])
    with pytest.raises(ChecksumError, match="version 1"):
        load_registered_network(f"models:/{NAME}@champion")


def test_record_weights_rejects_a_corrupted_upload(registry):
    from pipelines.registry import record_weights

    flip_byte(registry["stored"])
    with pytest.raises(ChecksumError, match="differ from the logged checkpoint"):
        record_weights(registry["client"], NAME, "1", source=registry["ckpt"])


def test_weight_files_lists_only_weights(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.pth").write_bytes(b"w")
    (tmp_path / "MLmodel").write_text("x")
    (tmp_path / "code.py").write_text("x")
    assert list(weight_files(tmp_path)) == ["data/model.pth"]
