"""The model zoo: every registered model builds, swaps its head and runs on its own input on the CPU; freezing,
input checks, the pretrained-weights cache (offline), the models table and the shape trace.

Tests over ~20 s on two CPU cores are marked `slow`: run them with `pytest -m slow tests/test_models.py`."""
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from har_colab.core import ConfigError, ShapeError
from har_colab.models import (MODELS, check_input, count_parameters, create_model, get_head, get_spec, head_classes,
                              inspect_model, models_table, set_head, weights_cache_dir)

torch.set_num_threads(min(2, torch.get_num_threads()))

SLOW = {"swin3d_b",          # 16 s alone on two CPU cores, over a minute when the cores are shared (see the report)
        "videomae_b", "timesformer_b", "vivit_b", "vjepa2_vitl"}   # full-size Hugging Face models: 4-28 s each
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]


def _n(*modules): return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("name", ALL)
def test_build_swap_head_forward(name):
    "Builds without weights, has the published parameter count, takes a 7-class head and runs on its own input."
    spec = get_spec(name)
    t0 = time.time()
    model = create_model(name, 400, pretrained=False)
    total = _n(model)
    assert abs(total / 1e6 - spec.params_m) / spec.params_m < 0.02, (name, total)
    set_head(model, spec, 7)
    assert head_classes(model, spec) == 7
    x = torch.randn(spec.input_shape(1))
    check_input(x, spec)
    x0 = x.clone()
    model.eval()
    with torch.no_grad(): y = model(x)
    assert y.shape == (1, 7) and torch.isfinite(y).all()
    assert torch.equal(x, x0)                           # the caller's batch is untouched (SlowFast packs a copy)
    print(f"{name}: {time.time() - t0:.1f} s")


def test_frame_counts_checked_empirically():
    "exact/min frames in the specs match what the models do."
    x3d = create_model("x3d_xs", 5, pretrained=False).eval()
    with torch.no_grad():
        with pytest.raises(RuntimeError): x3d(torch.zeros(1, 3, 2, 160, 160))          # fewer than its pool's 4 frames
        assert x3d(torch.zeros(1, 3, 8, 160, 160)).shape == (1, 5)                      # more is fine
        r3d = create_model("r3d_18", 5, pretrained=False).eval()
        assert r3d(torch.zeros(1, 3, 8, 112, 112)).shape == (1, 5)
    assert get_spec("x3d_xs").min_frames == 4 and not get_spec("x3d_xs").exact_frames
    assert not get_spec("r3d_18").exact_frames and get_spec("r3d_18").min_frames == 1


def test_mvit_rejects_other_frame_counts():
    model = create_model("mvit_v2_s", 5, pretrained=False).eval()
    with torch.no_grad(), pytest.raises(RuntimeError): model(torch.zeros(1, 3, 8, 224, 224))
    assert get_spec("mvit_v2_s").exact_frames and get_spec("mvit_v2_s").exact_size


def _trainable(model): return count_parameters(model)[0]


def test_freeze_r3d_18():
    m = create_model("r3d_18", 7, pretrained=False, freeze="backbone")
    assert _trainable(m) == 512 * 7 + 7
    m = create_model("r3d_18", 7, pretrained=False, freeze="all_but_last_k", k=1)
    assert _trainable(m) == _n(m.layer4, m.fc)
    m = create_model("r3d_18", 7, pretrained=False, freeze="all_but_last_k", k=2)
    assert _trainable(m) == _n(m.layer3, m.layer4, m.fc)
    assert all(not p.requires_grad for p in m.stem.parameters())
    assert _trainable(create_model("r3d_18", 7, pretrained=False, freeze="all")) == 0
    m = create_model("r3d_18", 7, pretrained=False)
    assert count_parameters(m) == (_n(m), 0)
    with pytest.raises(ConfigError, match="use 1 <= k <= 5"):
        create_model("r3d_18", 7, pretrained=False, freeze="all_but_last_k", k=6)
    with pytest.raises(ConfigError, match="freeze='head'"): create_model("r3d_18", 7, pretrained=False, freeze="head")


def test_freeze_x3d_s():
    m = create_model("x3d_s", 7, pretrained=False, freeze="backbone")
    assert _trainable(m) == 2048 * 7 + 7
    m = create_model("x3d_s", 7, pretrained=False, freeze="all_but_last_k", k=1)
    assert _trainable(m) == _n(m.blocks[4], m.blocks[5])                # last stage + the whole head block (its convs)
    m = create_model("x3d_s", 7, pretrained=False, freeze="all_but_last_k", k=5)
    assert _trainable(m) == _n(m)


def test_freeze_mvit_v2_s():
    m = create_model("mvit_v2_s", 7, pretrained=False, freeze="backbone")
    assert _trainable(m) == 768 * 7 + 7
    m = create_model("mvit_v2_s", 7, pretrained=False, freeze="all_but_last_k", k=2)
    assert _trainable(m) == _n(m.blocks[14], m.blocks[15], m.norm, m.head)
    with pytest.raises(ConfigError, match="use 1 <= k <= 16"):
        create_model("mvit_v2_s", 7, pretrained=False, freeze="all_but_last_k", k=17)


def test_freeze_s3d_conv_head():
    m = create_model("s3d", 7, pretrained=False, freeze="backbone")
    assert type(get_head(m, get_spec("s3d"))).__name__ == "Conv3d"
    assert _trainable(m) == 1024 * 7 + 7


@pytest.mark.parametrize("shape,fix", [
    ((1, 16, 3, 224, 224), "looks like B,T,C,H,W. Fix: x.permute(0, 2, 1, 3, 4)"),
    ((1, 16, 224, 224, 3), "looks like B,T,H,W,C. Fix: x.permute(0, 4, 1, 2, 3)"),
    ((3, 16, 224, 224), "one C,T,H,W clip without the batch dimension. Fix: x[None]"),
    ((16, 3, 224, 224), "one T,C,H,W clip without the batch dimension. Fix: x.permute(1, 0, 2, 3)[None]"),
    ((16, 224, 224, 3), "one T,H,W,C clip without the batch dimension. Fix: x.permute(3, 0, 1, 2)[None]"),
    ((1, 3, 16, 112, 112), "112x112 frames, not 224x224"),
    ((1, 3, 8, 224, 224), "mvit_v2_s needs exactly 16 frames; got 1,3,8,224,224. Set frames=16 or pick another model"),
])
def test_check_input_errors(shape, fix):
    spec = get_spec("mvit_v2_s")
    with pytest.raises(ShapeError) as e: check_input(torch.zeros(shape), spec)
    msg = str(e.value)
    assert fix in msg and "\n" not in msg
    if "needs exactly" not in fix: assert "expects B,C,T,H,W = B,3,16,224,224" in msg


def test_check_input_frames_setting():
    with pytest.raises(ShapeError, match="mvit_v2_s needs exactly 16 frames; set frames=16 or pick another model"):
        check_input(torch.zeros(1, 3, 8, 224, 224), get_spec("mvit_v2_s"), frames=8)
    with pytest.raises(ShapeError, match="slowfast_r50 needs at least 32 frames"):
        check_input(torch.zeros(1, 3, 16, 224, 224), get_spec("slowfast_r50"))
    with pytest.raises(ShapeError, match="packs its own"):
        check_input([torch.zeros(1, 3, 8, 224, 224), torch.zeros(1, 3, 32, 224, 224)], get_spec("slowfast_r50"))
    check_input(torch.zeros(1, 3, 24, 112, 112), get_spec("r3d_18"))       # ResNets take any length
    check_input(torch.zeros(1, 3, 48, 224, 224), get_spec("swin3d_t"), frames=48)


@pytest.fixture
def no_network(monkeypatch):
    "Every download attempt fails as it does offline."
    def offline(*a, **k): raise urllib.error.URLError("[Errno 101] Network is unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)


def test_offline_cache_torchvision(tmp_path, no_network):
    ref = create_model("r3d_18", 400, pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "r3d_18-b3b3357e.pth")
    m = create_model("r3d_18", 5, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(m.stem[0].weight, ref.stem[0].weight)
    assert torch.equal(m.layer4[1].conv2[0].weight, ref.layer4[1].conv2[0].weight)
    assert m.fc.out_features == 5


def test_offline_cache_env_var(tmp_path, no_network, monkeypatch):
    ref = create_model("mc3_18", 400, pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "mc3_18-a90a0ba3.pth")
    monkeypatch.setenv("HAR_COLAB_WEIGHTS", str(tmp_path))
    assert weights_cache_dir() == tmp_path
    m = create_model("mc3_18", 3, pretrained=True, freeze="backbone")
    assert torch.equal(m.stem[0].weight, ref.stem[0].weight) and count_parameters(m)[0] == 512 * 3 + 3


def test_offline_cache_pytorchvideo(tmp_path, no_network):
    ref = create_model("x3d_xs", 400, pretrained=False)
    torch.save({"model_state": ref.state_dict(), "epoch": 300}, tmp_path / "X3D_XS.pyth")   # pytorchvideo's layout
    m = create_model("x3d_xs", 5, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(m.blocks[0].conv.conv_t.weight, ref.blocks[0].conv.conv_t.weight)
    assert m.blocks[5].proj.out_features == 5
    m.eval()
    with torch.no_grad(): y = m(torch.randn(get_spec("x3d_xs").input_shape(2)))
    assert y.shape == (2, 5) and not torch.allclose(y.softmax(1).sum(1), y.sum(1))   # logits, not probabilities


def test_offline_cache_slowfast_prefixes(tmp_path, no_network):
    "The SlowFast wrapper loads pytorchvideo's checkpoint keys (blocks.N...), also with a DataParallel 'module.' prefix."
    ref = create_model("slowfast_r50", 400, pretrained=False)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    torch.save({"model_state": sd}, tmp_path / "SLOWFAST_8x8_R50.pyth")
    m = create_model("slowfast_r50", 6, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(m.blocks[1].multipathway_blocks[0].res_blocks[0].branch2.conv_a.weight,
                       ref.blocks[1].multipathway_blocks[0].res_blocks[0].branch2.conv_a.weight)
    assert m.blocks[6].proj.out_features == 6


@pytest.mark.parametrize("name", ["r3d_18", "x3d_xs"])
def test_offline_without_cache_is_one_line(tmp_path, no_network, name):
    spec = get_spec(name)
    with pytest.raises(ConfigError) as e: create_model(name, 5, pretrained=True, weights_dir=tmp_path / "empty")
    msg = str(e.value)
    assert "\n" not in msg and spec.weights_file in msg and spec.weights_url in msg and str(tmp_path / "empty") in msg
    assert "URLError" in msg and "pretrained=False" in msg
    assert not any((tmp_path / "empty").iterdir())           # no partial file left behind


def test_damaged_cache_file(tmp_path, no_network):
    (tmp_path / "r3d_18-b3b3357e.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="delete it to download it again"):
        create_model("r3d_18", 5, pretrained=True, weights_dir=tmp_path)


def test_weights_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("HAR_COLAB_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights_cache_dir() == tmp_path / "th" / "hub" / "checkpoints"
    assert weights_cache_dir(tmp_path / "w") == tmp_path / "w"


def test_models_table():
    t = models_table()
    lines = t.splitlines()
    assert len(lines) == 2 + 21 == 2 + len(MODELS)
    for name in MODELS: assert any(l.startswith(name + " ") for l in lines)
    assert "K400 top-1" in lines[0] and "80.757" in t and "3e-03 sgd" not in t and "0.003 sgd" in t


def test_inspect_model_r3d_18():
    s = inspect_model("r3d_18")
    assert "input 1,3,16,112,112" in s and "layer4" in s and "1,512,2,7,7" in s and "1,400" in s
    assert "33,371,472" in s and "GFLOPs" in s
    with pytest.raises(ShapeError, match="needs exactly 224x224"): inspect_model("mvit_v2_s", size=112)


@pytest.mark.slow
def test_inspect_model_mvit_v2_s():
    s = inspect_model("mvit_v2_s")
    assert "input 1,3,16,224,224" in s and "blocks.15" in s and "34,537,744" in s and len(s.splitlines()) < 80


def test_inspect_model_slowfast_shapes():
    s = inspect_model("slowfast_r50", flops=False)
    assert "[slow, fast] = [1,3,8,224,224; 1,3,32,224,224]" in s and "[1,80,8,56,56; 1,8,32,56,56]" in s and "blocks.6.proj" in s


def test_pytorchvideo_needs_no_alias_to_build():
    "Building pytorchvideo models leaves torchvision alone; the alias is installed only on request and only if missing."
    code = ("import sys; from har_colab.models import create_model, pytorchvideo_transforms_compat as c\n"
            "create_model('x3d_xs', 3, pretrained=False); create_model('slowfast_r50', 3, pretrained=False)\n"
            "assert 'torchvision.transforms.functional_tensor' not in sys.modules\n"
            "assert c() is True and c() is False\n"
            "import pytorchvideo.transforms; print('ok')")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
