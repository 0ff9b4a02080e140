"""Fault: the disk fills up. A small tmpfs is mounted for the test (root only: the test is skipped, saying why,
where mounting is not permitted) and a training run checkpoints onto it."""
import contextlib
import subprocess

import pytest

from conftest import assert_resumed_like_uninterrupted, train_tiny

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def tmpfs(path, size: int):
    """Mount a tmpfs of ``size`` bytes at ``path`` for the block; yields a function that resizes it."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs here: no mount command")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _bytes(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.mark.fault(fault="disk full (tmpfs) while a checkpoint is written", where="training engine (DeepSpeed save)",
                   outcome="clear error; the last complete checkpoint intact; resumes after space is freed")
def test_disk_full_during_checkpoint_save_then_resume(tmp_path, record_property):
    """Checkpoints every 2 steps, the newest two kept: a tmpfs of 2.5 checkpoints holds step 2 and step 4, and
    step 6 runs out of space. The run must stop with an error that says so, ``latest`` must still name step 4,
    and once the tmpfs is enlarged the re-run resumes there and ends with the uninterrupted run's weights."""
    layout = ("--zero-stage", 0, "--channels-last")
    full, part = tmp_path / "full", tmp_path / "part"
    train_tiny(full, full / "ckpt", 6, *layout)
    one = _bytes(full / "ckpt" / "step6")
    assert one > 0
    with tmpfs(tmp_path / "fs", int(2.5 * one) // 4096 * 4096) as resize:
        ckpt = tmp_path / "fs" / "ckpt"
        failed = train_tiny(part, ckpt, 6, *layout, check=False)
        out = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "No space left on device" in out, out[-3000:]
        assert (ckpt / "latest").read_text().strip() == "step4"
        assert not (part / "final.pt").exists()
        resize(8 * one + (1 << 20))
        train_tiny(part, ckpt, 6, *layout)
        worst = assert_resumed_like_uninterrupted(full, part, resumed_from=4)
        assert (ckpt / "latest").read_text().strip() == "step6"
    last = next(ln for ln in out.splitlines() if "No space left" in ln)
    last = last[last.index("No space left"):]
    record_property("measured", f"checkpoint {one / 1024:.0f} KiB, tmpfs {2.5 * one / 1024:.0f} KiB; "
                                f"error: {last[:160]}; resumed from step 4, max weight difference {worst:.1e}")
