"""Fault: the training process is SIGKILLed in the middle of writing a checkpoint (half the file on disk)."""
import pytest
import torch

from conftest import assert_resumed_like_uninterrupted, train_tiny

pytestmark = pytest.mark.slow

@pytest.mark.fault(fault="SIGKILL while a checkpoint file is half written", where="training engine (DeepSpeed save)",
                   outcome="recovered: resumed from the last complete checkpoint, same weights as uninterrupted")
def test_kill_during_checkpoint_write_resumes_from_the_last_complete_one(tmp_path, record_property):
    """At the default layout (ZeRO-0, NHWC), checkpoints every 2 steps; killed while writing step 4's file.
    ``latest`` still names step 2, the resumed run starts there (not from the half-written step 4, not from 0)
    and ends with the uninterrupted run's weights."""
    layout = ("--zero-stage", 0, "--channels-last")
    full, part = tmp_path / "full", tmp_path / "part"
    train_tiny(full, full / "ckpt", 6, *layout)
    killed = train_tiny(part, part / "ckpt", 6, *layout, "--die-in-save", 4, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = part / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "step2"
    partial = [p for p in (ckpt / "step4").iterdir() if p.is_file()]
    assert partial, "the kill should leave a partial step4 checkpoint behind"
    with pytest.raises(Exception):
        torch.load(partial[0], weights_only=False)   # really a truncated file
    train_tiny(part, ckpt, 6, *layout)
    worst = assert_resumed_like_uninterrupted(full, part, resumed_from=2)
    assert (ckpt / "latest").read_text().strip() == "step6"
    record_property("measured", f"resumed from step 2; max weight difference {worst:.1e}")
