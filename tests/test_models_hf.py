"""Issue 17: the Hugging Face video transformers behind the same specs as the rest of the zoo.

Every model runs on a clip its own spec makes (small configs, full-size input); the smallest trains a step through the
data path; checkpoints load offline from the hub cache layout (written here with `save_to_hub_cache`); a missing
checkpoint and a missing `transformers` are one line; the q_bias/v_bias of an old VideoMAE checkpoint, which
transformers < 5.18 (Colab's 5.15; simulated on newer releases) leaves at zero, are copied from the file, and the load
report says so; `har-colab train --model videomae_s` trains on the CPU from a cached (tiny) checkpoint. The full-size
models run in tests/test_models.py (build, parameter count, forward: `slow` except videomae_s) and
tests/test_models_train_step.py (`slow`)."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from har_colab.core import ConfigError
from har_colab.models import (MODELS, check_input, count_parameters, create_model, freeze_layers, get_spec, lr_scales,
                              models_table, set_drop_path, set_head)

from conftest import run_cli

HF = ["videomae_s", "videomae_b", "timesformer_b", "vivit_b", "vjepa2_vitl"]
try:
    import transformers
    HAVE_TF = True
except ImportError:
    HAVE_TF = False
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="transformers is not installed (pip install har_colab[hf])")
ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, torch.get_num_threads()))


def _tf_version():
    return tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])


@pytest.fixture
def offline(monkeypatch):
    "The hub is unreachable (as here) and says so at once: HF_HUB_OFFLINE, also for an already imported huggingface_hub."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if HAVE_TF:
        import huggingface_hub.constants as c
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    "Two short real videos (2 classes), long enough for every spec's clip."
    from har_colab.datasets import Samples
    from har_colab.synthetic import render_motion_video, write_video
    d = tmp_path_factory.mktemp("v")
    paths = [write_video(d / f"c{k}" / "v.mp4", render_motion_video(np.random.default_rng(k), 2 * k, 48, (128, 96)))
             for k in range(2)]
    return Samples(paths, [0, 1], ["a", "b"])


def test_registered_without_importing_transformers():
    "`import har_colab.models` (and the CLI) lists the five without importing transformers."
    code = ("import sys; import har_colab.models as m, har_colab.cli\n"
            f"assert {HF!r} == [n for n in m.MODELS if m.MODELS[n].family == 'huggingface'], list(m.MODELS)\n"
            "assert 'transformers' not in sys.modules\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_specs():
    for name in HF:
        s = get_spec(name)
        assert s.layout == "B,C,T,H,W" and s.arch == "transformer" and s.extra == "hf" and s.needs == "transformers"
        assert s.weights_url == f"https://huggingface.co/{s.weights}" and s.grad_checkpointing and s.load
        assert s.source and s.params_m and s.min_frames <= s.frames
    assert get_spec("videomae_b").layer_decay == 0.7 and get_spec("videomae_b").drop_path == 0.2
    assert get_spec("vjepa2_vitl").freeze == "backbone" and get_spec("vjepa2_vitl").head_with == ("hf.pooler",)
    t = models_table()
    for name in HF: assert re.search(rf"^{name} +huggingface ", t, re.M), name


@needs_tf
@pytest.mark.parametrize("name", HF)
def test_small_model_takes_a_clip_of_its_spec(name, videos):
    "A ClipDataset clip made from the spec goes in as B,C,T,H,W; the model gets B,T,C,H,W and returns (B, classes)."
    from har_colab.clips import ClipDataset
    from har_colab.models_hf import build_small
    spec = get_spec(name)
    x, y = ClipDataset(videos, spec, train=False)[0]
    assert tuple(x.shape) == spec.input_shape(1)[1:]
    batch = torch.stack([x, x.flip(-1)])
    check_input(batch, spec)
    m = set_head(build_small(name), spec, 3).eval()
    seen = {}
    m.hf.register_forward_pre_hook(lambda mod, a, kw: seen.update({k: tuple(v.shape) for k, v in kw.items()}), with_kwargs=True)
    with torch.no_grad(): out = m(batch)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    b, c, t, h, w = batch.shape
    assert seen == {m.input_name: (b, t, c, h, w)}
    attn = m.hf.config._attn_implementation
    assert attn == ("eager" if name == "timesformer_b" else "sdpa"), attn


@needs_tf
@pytest.mark.parametrize("name", ["videomae_s", "vjepa2_vitl"])
def test_freezing_counts_blocks(name):
    from har_colab.models_hf import build_small
    spec = get_spec(name)
    m = build_small(name, 5)
    heads = [m.get_submodule(p) for p in (spec.head, *spec.head_with)]
    tail = [m.get_submodule(p) for p in spec.tail]
    last = m.get_submodule(spec.blocks[0][:-2])[-1]
    n = lambda *ms: sum(p.numel() for mod in ms for p in mod.parameters())
    assert count_parameters(freeze_layers(m, spec, "backbone"))[0] == n(*heads)
    assert count_parameters(freeze_layers(m, spec, "all_but_last_k", 1))[0] == n(*heads, *tail, last)
    with pytest.raises(ConfigError, match="use 1 <= k <= 2"): freeze_layers(m, spec, "all_but_last_k", 3)


@needs_tf
def test_one_training_step_through_the_data_path(videos, tmp_path):
    "videomae_s (small config, full-size clips): the Trainer's step with the spec's recipe: layer decay, drop path."
    from har_colab.checkpoint import RunFolder
    from har_colab.clips import ClipDataset
    from har_colab.models_hf import build_small
    from har_colab.train import Trainer, TrainConfig, resolve_config
    spec = get_spec("videomae_s")
    cfg = resolve_config(TrainConfig(run_dir=str(tmp_path), data=str(tmp_path), model="videomae_s", pretrained=False,
                                     batch_size=2, workers=0, epochs=1, max_steps_per_epoch=1, hflip=False))
    assert (cfg.layer_decay, cfg.drop_path, cfg.warmup_epochs, cfg.weight_decay, cfg.freeze) == (0.75, 0.1, 5, 0.05, "none")
    kw = dict(normalize=False, frames=cfg.frames)
    train_ds, val_ds = ClipDataset(videos, spec, train=True, **kw), ClipDataset(videos, spec, train=False, **kw)
    model = set_drop_path(set_head(build_small("videomae_s"), spec, 2), spec, cfg.drop_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(cfg, model, train_ds, val_ds, RunFolder(tmp_path).mkdir(), callbacks=[], echo=lambda m: None)
    lrs = sorted({g["lr"] for g in t.opt.param_groups}, reverse=True)
    assert len(lrs) == 4 and lrs[-1] / lrs[0] == pytest.approx(0.75 ** 3)   # head, block 2, block 1, patch embedding
    x, y = next(iter(t.train_loader))
    assert x.dtype == torch.uint8 and tuple(x.shape) == spec.input_shape(2)
    t.train_step([(x, y)])
    assert np.isfinite(t.last_loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "hf.classifier.weight" in changed and "hf.videomae.embeddings.patch_embeddings.projection.weight" in changed


@needs_tf
def test_drop_path_and_grad_checkpointing():
    "Stochastic depth changes training outputs only; activation checkpointing recomputes blocks, same gradients."
    from har_colab.models_hf import build_small
    spec = get_spec("videomae_s")
    x = torch.randn(spec.input_shape(2))
    torch.manual_seed(0); a = build_small("videomae_s", 3)
    b = set_drop_path(build_small("videomae_s", 3), spec, 0.9); b.load_state_dict(a.state_dict())
    a.eval(); b.eval()
    with torch.no_grad(): assert torch.equal(a(x), b(x))
    b.train(); a.train()
    with torch.no_grad():
        outs = [b(x) for _ in range(4)]
        assert any(not torch.equal(outs[0], o) for o in outs[1:]) and torch.equal(a(x), a(x))
    calls = []
    inner = a.hf.videomae.encoder.layer[0].attention
    inner.register_forward_hook(lambda *args: calls.append(1))
    def grads(model):
        model.zero_grad(); calls.clear(); model(x).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}, len(calls)
    g0, n0 = grads(a)
    spec.grad_checkpointing(a)
    g1, n1 = grads(a)
    assert (n0, n1) == (1, 2)                       # the block ran again in the backward pass
    for k in g0: torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)


def _plant(name, weights_dir, old_names=False, **config):
    "A small random checkpoint of `name`'s class under its hub id in the cache; `old_names`: VideoMAE's pre-5.x q_bias/v_bias."
    from har_colab.models_hf import build_small, hf_cache_dir, save_to_hub_cache
    net = build_small(name, 400).hf
    for k, p in net.named_parameters():
        if k.endswith("bias"): torch.nn.init.normal_(p)            # non-zero biases, as in a trained checkpoint
    snap = save_to_hub_cache(net, get_spec(name).weights, hf_cache_dir(weights_dir))
    if old_names:
        from safetensors.torch import load_file, save_file
        sd = load_file(snap / "model.safetensors")
        sd = {re.sub(r"attention\.attention\.(query|value)\.bias$", lambda m: f"attention.attention.{m[1][0]}_bias", k): v
              for k, v in sd.items() if not k.endswith("attention.attention.key.bias")}
        save_file(sd, snap / "model.safetensors", metadata={"format": "pt"})
    return net


@needs_tf
def test_offline_cache_load(tmp_path, offline, monkeypatch):
    "A cached checkpoint loads with the network cut, all of it (report), then gets the dataset's head."
    import socket
    ref = _plant("videomae_s", tmp_path)
    def no_net(*a, **k): raise OSError("network is unreachable")
    monkeypatch.setattr(socket.socket, "connect", no_net)
    m = create_model("videomae_s", 3, pretrained=True, weights_dir=tmp_path)
    r = m.har_load_report
    assert r.ok and r.loaded == len(ref.state_dict()), r.summary()
    assert r.summary().startswith("pretrained weights MCG-NJU/videomae-small-finetuned-kinetics: all ")
    assert torch.equal(m.hf.videomae.encoder.layer[1].attention.attention.query.bias,
                       ref.videomae.encoder.layer[1].attention.attention.query.bias)
    assert m.hf.classifier.out_features == 3 and m.hf.config._attn_implementation == "sdpa"
    with torch.no_grad(): assert m.eval()(torch.zeros(get_spec("videomae_s").input_shape(1))).shape == (1, 3)


@needs_tf
def test_old_bin_checkpoint(tmp_path, offline):
    "Hub repos from the transformers 4 days hold pytorch_model.bin: it loads, and the report reads it too."
    from har_colab.models_hf import build_small, hf_cache_dir, save_to_hub_cache
    net = build_small("timesformer_b").hf
    snap = save_to_hub_cache(net, get_spec("timesformer_b").weights, hf_cache_dir(tmp_path))
    (snap / "model.safetensors").unlink()
    torch.save(net.state_dict(), snap / "pytorch_model.bin")
    m = create_model("timesformer_b", 3, pretrained=True, weights_dir=tmp_path)
    r = m.har_load_report
    assert r.ok and r.loaded == len(net.state_dict()), r.summary()
    assert m.hf.config._attn_implementation == "eager"          # TimeSformer has no SDPA path


@needs_tf
def test_vjepa2_backbone_gets_a_new_probe(tmp_path, offline):
    "V-JEPA 2's checkpoint is a backbone (with a predictor): the probe is reported as new, the predictor dropped."
    from har_colab.models_hf import build_small, hf_cache_dir, save_to_hub_cache
    tf = transformers
    from har_colab.models_hf import HF_CHECKPOINTS, small_config
    ck = HF_CHECKPOINTS["vjepa2_vitl"]
    backbone = tf.VJEPA2Model(tf.VJEPA2Config(**{**ck.config, **small_config("vjepa2_vitl")}))
    save_to_hub_cache(backbone, ck.hub_id, hf_cache_dir(tmp_path))
    m = create_model("vjepa2_vitl", 4, pretrained=True, weights_dir=tmp_path)
    r = m.har_load_report
    assert r.ok, r.summary()
    assert r.loaded == len(backbone.state_dict()) and r.new and all(k.startswith(("pooler.", "classifier.")) for k in r.new)
    assert m.hf.vjepa2.predictor is None
    tr, fr = count_parameters(m)                    # the recipe: the probe trains on the frozen encoder
    assert tr == sum(p.numel() for p in [*m.hf.pooler.parameters(), *m.hf.classifier.parameters()]) and fr > 0


@needs_tf
def test_missing_checkpoint_offline_is_one_line(tmp_path, offline):
    with pytest.raises(ConfigError) as e: create_model("timesformer_b", 5, pretrained=True, weights_dir=tmp_path / "w")
    msg = str(e.value)
    assert "\n" not in msg and "facebook/timesformer-base-finetuned-k400" in msg and str(tmp_path / "w" / "huggingface") in msg
    assert "pretrained=False" in msg


def test_missing_extra(monkeypatch, tmp_path):
    "Without transformers: rows marked, choosing one is one line with the fix, in Python and in the CLI."
    monkeypatch.setitem(sys.modules, "transformers", None)
    t = models_table()
    for name in HF: assert re.search(rf"^{name} .*needs har_colab\[hf\]", t, re.M), name
    assert not re.search(r"^r3d_18 .*needs", t, re.M)
    for pretrained in (False, True):
        with pytest.raises(ConfigError, match=r"pip install har_colab\[hf\]$"): create_model("videomae_s", 3, pretrained=pretrained)
    from har_colab.train import TrainConfig, resolve_config
    with pytest.raises(ConfigError, match=r"videomae_b needs the transformers package, which is not installed: pip install har_colab\[hf\]"):
        resolve_config(TrainConfig(data=str(tmp_path), model="videomae_b"))
    code = ("import sys; sys.modules['transformers'] = None\nfrom har_colab.cli import main\n"
            f"sys.exit(main(['train', '--model', 'vivit_b', '--data', {str(tmp_path)!r}, '--run-dir', {str(tmp_path / 'run')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["har-colab train: error: vivit_b needs the transformers package, which is not "
                                             "installed: pip install har_colab[hf]"]


def _old_loader(monkeypatch):
    "transformers >= 5.18 maps VideoMAE's q_bias/v_bias itself; without that mapping it loads as 5.15 does (zeros)."
    import transformers.conversion_mapping as cm
    orig = cm.get_checkpoint_conversion_mapping
    monkeypatch.setattr(cm, "get_checkpoint_conversion_mapping",
                        lambda key: None if key in ("videomae", "VideoMAEForVideoClassification") else orig(key))


@needs_tf
def test_old_videomae_biases_are_copied_from_the_checkpoint(tmp_path, offline, monkeypatch, small_data):
    """The hub's VideoMAE checkpoints name their attention biases q_bias/v_bias; transformers before 5.18 (Colab's 5.15)
    leaves them at zero without an error. The loader copies them from the checkpoint file itself, the load report says
    so, and the model is the checkpoint's: right on Colab's transformers with no upgrade and no restart. On 5.15 this is
    the real loader; on >= 5.18, which loads them itself, the old loader is simulated by removing its mapping."""
    import dataclasses
    from har_colab.doctor import doctor
    from har_colab.models_hf import HF_CHECKPOINTS, load_hf
    from har_colab.train import TrainConfig
    ref = _plant("videomae_s", tmp_path, old_names=True)
    layers = len(ref.videomae.encoder.layer)
    if _tf_version() >= (5, 18):
        good = create_model("videomae_s", 3, pretrained=True, weights_dir=tmp_path)   # this release loads them itself
        assert good.har_load_report.ok and "copied" not in good.har_load_report.summary(), good.har_load_report.summary()
        _old_loader(monkeypatch)
    # without the copy, this transformers leaves the biases at zero (so the test tests something on this release)
    plain = load_hf(dataclasses.replace(HF_CHECKPOINTS["videomae_s"], copy_if_zero=()), tmp_path, name="videomae_s")
    r = plain.har_load_report
    assert len(r.zeroed) == 2 * layers and all(re.search(r"attention\.(query|value)\.bias$", k) for k in r.zeroed), r.summary()
    assert not plain.hf.videomae.encoder.layer[0].attention.attention.query.bias.any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = create_model("videomae_s", 3, pretrained=True, weights_dir=tmp_path)
    assert not [w for w in caught if "pretrained weights" in str(w.message)]   # a load report that is not ok warns
    r = m.har_load_report
    assert r.ok and not r.zeroed and not r.missing and not r.unexpected, r.summary()
    assert r.loaded == r.total - len(r.new) and all(k.endswith("attention.key.bias") for k in r.new)   # 5.15: zero by design
    note = f"copied {2 * layers} q_bias/v_bias tensors from the checkpoint (transformers {transformers.__version__} leaves them zero)"
    assert note in r.summary(), r.summary()
    from safetensors.torch import load_file
    sd = load_file(hf_snapshot(tmp_path) / "model.safetensors")
    for i, layer in enumerate(m.hf.videomae.encoder.layer):
        att = layer.attention.attention
        for ours, theirs in ((att.query.bias, "q_bias"), (att.value.bias, "v_bias")):
            file = sd[f"videomae.encoder.layer.{i}.attention.attention.{theirs}"]
            assert file.any() and torch.equal(ours, file), (i, theirs)
    assert torch.equal(m.hf.videomae.encoder.layer[1].attention.attention.value.bias,
                       ref.videomae.encoder.layer[1].attention.attention.value.bias)
    cfg = TrainConfig(data=str(small_data), run_dir=str(tmp_path / "run"), model="videomae_s", weights_dir=str(tmp_path),
                      workers=0, hflip=False)
    rep = doctor(cfg, checks=("model",), max_videos=8, batch_size=2)    # the doctor sees the copied weights: a pass
    f = rep["pretrained weights"]
    assert f.status == "pass" and note in f.evidence, (f.status, f.evidence)


def hf_snapshot(weights_dir):
    from har_colab.models_hf import hf_cache_dir, hub_snapshot
    return hub_snapshot(get_spec("videomae_s").weights, hf_cache_dir(weights_dir))


@needs_tf
def test_cli_trains_videomae_s_from_cached_checkpoint(tmp_path, small_data):
    "`har-colab train --model videomae_s --pretrained` on the CPU, offline, from a (tiny, test-written) cached checkpoint; then eval."
    w = tmp_path / "weights"
    _plant("videomae_s", w)
    run = tmp_path / "run"
    r = run_cli("train", "--model", "videomae_s", "--pretrained", "--data", small_data, "--run-dir", run, "--weights-dir", w,
                "--epochs", 1, "--batch-size", 4, "--max-steps-per-epoch", 2, "--workers", 0, "--eval-clips", 1,
                "--device", "cpu", "--no-progress", "--no-plot", timeout=600, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    log = (run / "events.log").read_text()
    assert "pretrained weights MCG-NJU/videomae-small-finetuned-kinetics: all " in log and "tensors loaded" in log
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["layer_decay"], cfg["drop_path"], cfg["warmup_epochs"], cfg["weight_decay"], cfg["freeze"]) == (0.75, 0.1, 5, 0.05, "none")
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    st = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert st["model"]["hf.classifier.weight"].shape[0] == 4
    # evaluation (like a resumed run) rebuilds the architecture it trained: the cached checkpoint's config
    r = run_cli("eval", "--run-dir", run, "--workers", 0, "--device", "cpu", timeout=600, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and (run / "eval.json").exists(), r.stderr[-3000:]


@needs_tf
def test_cli_models_and_inspect():
    r = run_cli("models")
    assert r.returncode == 0
    for name in HF: assert re.search(rf"^{name} +huggingface ", r.stdout, re.M)
    assert "vjepa2_vitl" in r.stdout and "16 x 4 exact     224" in r.stdout
    from har_colab.models import inspect_model
    s = inspect_model("videomae_s", flops=False)
    assert "input 1,3,16,224,224 (B,C,T,H,W)" in s and "hf.videomae.encoder.layer.11" in s and "1,1568,384" in s
    assert "1,400" in s and "22,0" in s
