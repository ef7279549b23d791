"""Issue 4: every registered model trains one optimizer step on the CPU through the normal data path: a real video,
ClipDataset with the model's own spec (frames, stride, resize, crop, mean/std), a DataLoader, the Trainer's step."""
import time

import numpy as np
import pytest
import torch

from har_colab.models import list_models

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from har_colab.datasets import Samples
    from har_colab.synthetic import render_motion_video, write_video
    d = tmp_path_factory.mktemp("v")
    paths = [write_video(d / f"c{k}" / "v.mp4", render_motion_video(np.random.default_rng(k), 2 * k, 40, (96, 72))) for k in range(2)]
    return Samples(paths, [0, 1], ["a", "b"])


QUICK = {"tiny3d", "r3d_18", "x3d_xs", "slowfast_r50"}   # the CI set: one of each input path; the rest are `slow`


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in list_models()])
def test_one_training_step_through_the_data_path(name, videos, tmp_path):
    from har_colab.checkpoint import RunFolder
    from har_colab.clips import ClipDataset
    from har_colab.models import check_input, create_model, get_spec
    from har_colab.train import Trainer, TrainConfig, resolve_config
    spec = get_spec(name)
    cfg = resolve_config(TrainConfig(run_dir=str(tmp_path), data=str(tmp_path), model=name, pretrained=False, batch_size=1,
                                     workers=0, epochs=1, max_steps_per_epoch=1, hflip=False))
    train_ds, val_ds = ClipDataset(videos, spec, train=True), ClipDataset(videos, spec, train=False)
    x, y = train_ds[(0, 0)]
    assert tuple(x.shape) == spec.input_shape(1)[1:]                      # C,T,H,W derived from the spec
    check_input(x[None], spec)
    model = create_model(name, 2, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    t = Trainer(cfg, model, train_ds, val_ds, RunFolder(tmp_path).mkdir(), callbacks=[], echo=lambda m: None)
    t0 = time.time()
    t.train_step([(x[None], torch.tensor([y]))])
    assert np.isfinite(t.last_loss)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, f"{name}: no weight changed after a step"
    print(f"{name}: step {time.time() - t0:.1f} s")
