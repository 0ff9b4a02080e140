"""Fault: the disk fills up. A small tmpfs is mounted for the test (root only: the test is skipped, saying why,
where mounting is not permitted) and a training run checkpoints onto it."""
import contextlib
import subprocess

import pytest
import yaml

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


def _hashes(folder) -> dict[str, str]:
    from maskdcpt.integrity import file_sha256

    return {f.relative_to(folder).as_posix(): file_sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.fault(fault="disk full (tmpfs) while synthesis writes its shards", where="synthesize stage",
                   outcome="clear error naming the shard; data/pairs and data/prepared intact; resumes after space "
                           "is freed, reusing the finished shards, to the uninterrupted output")
def test_disk_full_during_synthesis_then_resume(tmp_path, record_property):
    """The stage first runs uninterrupted (the reference ``data/pairs``), then again with its staging folder on a
    tmpfs that holds under half of the shards: it must fail saying so, leave ``data/pairs`` and ``data/prepared``
    as they were, keep the finished shards' completion records, and after the tmpfs is enlarged finish with the
    reference's bytes, without re-making the shards finished before the failure."""
    from conftest import make_project, run_stage

    project = make_project(tmp_path / "proj", {"synthesize.shard_size": 4, "synthesize.workers": 1}, dvc=False)
    run_stage(project, "prepare")
    run_stage(project, "synthesize")
    reference, prepared = _hashes(project / "data" / "pairs"), _hashes(project / "data" / "prepared")
    total = _bytes(project / ".cache" / "synthesis")
    shards = len(list((project / ".cache" / "synthesis").glob("*.tar")))
    assert shards >= 6, "too few shards for a partial run"
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    with tmpfs(tmp_path / "fs", max(int(0.45 * total) // 4096 * 4096, 8192)) as resize:
        staging = tmp_path / "fs" / "staging"
        params["synthesize"]["staging_dir"] = str(staging)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        failed = run_stage(project, "synthesize", check=False)
        err = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "No space left on device" in err and "could not write shard" in err, err[-3000:]
        assert _hashes(project / "data" / "pairs") == reference
        assert _hashes(project / "data" / "prepared") == prepared
        finished = {f.name: f.stat().st_mtime_ns for f in staging.glob("*.tar")
                    if (staging / f"{f.name}.done.json").is_file()}
        assert 0 < len(finished) < shards, finished
        resize(4 * total + (1 << 20))
        run_stage(project, "synthesize")
        assert _hashes(project / "data" / "pairs") == reference
        reused = {n: (staging / n).stat().st_mtime_ns for n in finished}
        assert reused == finished, "a shard finished before the failure was made again"
    line = next(ln for ln in err.splitlines() if "could not write shard" in ln)
    record_property("measured", f"{shards} shards, {total / 1024:.0f} KiB; tmpfs {0.45 * total / 1024:.0f} KiB: "
                                f"{len(finished)} finished before the failure, reused on resume; error: "
                                f"{line[line.index('could not'):][:150]}")
