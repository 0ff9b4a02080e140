"""DeepSpeed engine: training through deepspeed.initialize on CPU, checkpoints, kill-and-resume equivalence."""
import pytest
import torch

from conftest import train_tiny

@pytest.mark.parametrize("layout", [("--zero-stage", 0, "--channels-last"), ("--zero-stage", 1)],
                         ids=["zero0-nhwc", "zero1-nchw"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, layout):
    """ZeRO-0 + NHWC is the params.yaml default (NHWC weights, fused AdamW state); ZeRO-1 keeps flat buffers."""
    full, part = tmp_path / "full", tmp_path / "part"
    train_tiny(full, full / "ckpt", 6, *layout)
    killed = train_tiny(part, part / "ckpt", 6, "--die-at", 5, *layout, check=False)
    assert killed.returncode == 17
    assert (part / "ckpt" / "latest").read_text().strip() == "step4"
    train_tiny(part, part / "ckpt", 6, *layout)
    a = torch.load(full / "final.pt", weights_only=False)
    b = torch.load(part / "final.pt", weights_only=False)
    assert b["resumed_from"] == 4 and a["resumed_from"] == 0
    for key in a["params"]:
        torch.testing.assert_close(a["params"][key], b["params"][key], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["params_ema"][key], b["params_ema"][key], atol=1e-6, rtol=0)
    assert a["losses"][-1] < a["losses"][0]


@pytest.mark.parametrize("zero_stage", [0, 1])
@pytest.mark.parametrize("grad_clip", [0.0, 5.0], ids=["no-clip", "clip5"])
def test_engine_trains_the_weights_of_a_plain_torch_loop(tmp_path, zero_stage, grad_clip):
    """The engine adds nothing to the numerics: same weights and EMA as a plain eager loop (AdamW, cosine LR,
    clip_grad_norm_ only when grad_clip > 0). The loss is scaled so that every gradient norm is far above 5
    (and above DeepSpeed's own default clip of 1.0): clipping at any other norm, or clipping with grad_clip 0,
    changes AdamW's steps after the first and the weights with them."""
    ref, run = tmp_path / "plain", tmp_path / "engine"
    common = ("--grad-clip", grad_clip, "--loss-scale", 1000.0)
    train_tiny(ref, ref / "ckpt", 6, "--plain", *common)
    train_tiny(run, run / "ckpt", 6, "--zero-stage", zero_stage, *common)
    a = torch.load(ref / "final.pt", weights_only=False)
    b = torch.load(run / "final.pt", weights_only=False)
    assert len(a["grad_norms"]) == 6 and min(a["grad_norms"]) > 20.0  # every step far above both clip norms
    for key in a["params"]:
        torch.testing.assert_close(b["params"][key], a["params"][key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b["params_ema"][key], a["params_ema"][key], atol=1e-5, rtol=1e-5)


def test_resume_must_fails_loudly_without_checkpoint(tmp_path):
    proc = train_tiny(tmp_path, tmp_path / "empty", 2, "--resume", "must", check=False)
    assert proc.returncode != 0
    assert "no checkpoint" in proc.stderr


@pytest.mark.parametrize("arch", ["nafnet", "restormer", "promptir", "swinir"])
def test_channels_last_batches_train_the_same_weights(tmp_path, arch):
    """deepspeed.channels_last (the params.yaml default) only changes the memory layout of the batches and of the
    4-D weights: same weights up to conv rounding, for every backbone (PromptIR's 5-D prompts stay as they are)."""
    nchw, nhwc = tmp_path / "nchw", tmp_path / "nhwc"
    train_tiny(nchw, nchw / "ckpt", 4, "--zero-stage", 0, "--arch", arch)
    train_tiny(nhwc, nhwc / "ckpt", 4, "--zero-stage", 0, "--channels-last", "--arch", arch)
    a = torch.load(nchw / "final.pt", weights_only=False)
    b = torch.load(nhwc / "final.pt", weights_only=False)
    assert not any(a["channels_last"]) and all(b["channels_last"]) and len(b["channels_last"]) == 4
    for key in a["params"]:
        torch.testing.assert_close(a["params"][key], b["params"][key], atol=1e-5, rtol=1e-5)
        # trained with NHWC weights, handed back (and checkpointed by the stages) in the plain layout
        assert b["params"][key].is_contiguous() and b["params_ema"][key].is_contiguous()
