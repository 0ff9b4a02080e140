"""DeepSpeed engine: training through deepspeed.initialize on CPU, checkpoints, kill-and-resume equivalence."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _run(full, full / "ckpt", 6)
    killed = _run(part, part / "ckpt", 6, "--die-at", 5, check=False)
    assert killed.returncode == 17
    assert (part / "ckpt" / "latest").read_text().strip() == "step4"
    _run(part, part / "ckpt", 6)
    a = torch.load(full / "final.pt", weights_only=False)
    b = torch.load(part / "final.pt", weights_only=False)
    assert b["resumed_from"] == 4 and a["resumed_from"] == 0
    for key in a["params"]:
        torch.testing.assert_close(a["params"][key], b["params"][key], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["params_ema"][key], b["params_ema"][key], atol=1e-6, rtol=0)
    assert a["losses"][-1] < a["losses"][0]


def test_resume_must_fails_loudly_without_checkpoint(tmp_path):
    proc = _run(tmp_path, tmp_path / "empty", 2, "--resume", "must", check=False)
    assert proc.returncode != 0
    assert "no checkpoint" in proc.stderr
