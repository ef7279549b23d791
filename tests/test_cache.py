"The decoded-clip cache: same pixels as decoding, reuse, rebuild on change, concurrent builders, size report and limit."
import json
import multiprocessing as mp
import os
import shutil
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

SPEC = types.SimpleNamespace(frames=8, stride=2, resize=48, crop=40, mean=(0.45, 0.42, 0.4), std=(0.225, 0.22, 0.23))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    "6 small videos (2 classes), 90x70 so that the short-side resize really resamples; one .avi among them."
    from har_colab.datasets import load_samples
    from har_colab.synthetic import make_synthetic_dataset, render_motion_video, write_video
    root = make_synthetic_dataset(tmp_path_factory.mktemp("v") / "motion", classes=2, videos_per_class=3, frames=30, size=(90, 70))
    write_video(root / "left" / "extra.avi", render_motion_video(np.random.default_rng(5), 0, 40, (90, 70)), fps=25, codec="mpeg4")
    return load_samples("folder", root)


def _ds(samples, train, cache=None, K=1):
    from har_colab.clips import ClipDataset
    return ClipDataset(samples, SPEC, train=train, clips_per_video=K, cache=cache or "none", seed=1)


@pytest.mark.parametrize("train,K", [(True, 1), (False, 3)])
def test_cached_items_are_the_same_pixels(videos, tmp_path, train, K):
    from har_colab.cache import ClipCache
    cache = ClipCache(tmp_path / "c", resize=SPEC.resize)
    plain, cached = _ds(videos, train, K=K), _ds(videos, train, cache, K)
    for epoch in range(3):
        for i in range(len(plain)):
            (a, ya), (b, yb) = plain[i, epoch], cached[i, epoch]
            assert ya == yb and torch.equal(a, b), (i, epoch)
    assert cache.builds == len(videos)                          # each video decoded once, on its first read
    assert cache.hits == 3 * len(plain) - len(videos)           # every later read came from the cache
    if train:                                                   # the clips still vary per epoch
        assert not torch.equal(cached[0, 0][0], cached[0, 1][0])


def test_cache_is_reused_across_datasets_and_rebuilt_when_the_video_changes(videos, tmp_path):
    from har_colab.cache import ClipCache
    from har_colab.datasets import Samples
    src = Path(videos.paths[0]); vid = tmp_path / "v" / src.name
    vid.parent.mkdir(); shutil.copy(src, vid)
    s = Samples([str(vid)], [0], ["a"])
    first = ClipCache(tmp_path / "c", resize=SPEC.resize)
    x0 = _ds(s, False, first)[0][0]
    assert (first.builds, first.hits) == (1, 0)
    again = ClipCache(tmp_path / "c", resize=SPEC.resize)      # a new process / epoch: the file is reused
    assert torch.equal(_ds(s, False, again)[0][0], x0) and (again.builds, again.hits) == (1 - 1, 1)
    t = time.time_ns() + 5 * 10**9                              # mtime changes: rebuilt, stale entry deleted
    os.utime(vid, ns=(t, t))
    _ds(s, False, again)[0]
    assert again.builds == 1 and len(list((tmp_path / "c").glob("*.npy"))) == 1
    shutil.copy(videos.paths[-1], vid)                          # other content (and size): rebuilt, new pixels
    x2 = _ds(s, False, again)[0][0]
    assert again.builds == 2 and torch.equal(x2, _ds(s, False)[0][0]) and not torch.equal(x2, x0)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1


def test_other_short_side_is_another_entry(videos, tmp_path):
    from har_colab.cache import ClipCache
    a, b = ClipCache(tmp_path, resize=48), ClipCache(tmp_path, resize=32)
    assert a.entry(videos.paths[0]) != b.entry(videos.paths[0])
    with pytest.raises(Exception, match="short side"):
        _ds(videos, True, b)


def _build(args):
    root, paths, resize = args
    from har_colab.cache import ClipCache
    c = ClipCache(root, resize=resize)
    for p in paths:
        with c.open(p) as v: v.read([0])
    return c.builds


def test_concurrent_builders_do_not_corrupt_entries(videos, tmp_path):
    "4 processes open the same videos at the same time: each entry is built once (the lock) and loads intact."
    from har_colab.cache import ClipCache
    from har_colab.transforms import resize_short_side
    from har_colab.video import read_frames
    paths = list(videos.paths)
    with mp.get_context("fork").Pool(4) as pool:
        builds = pool.map(_build, [(tmp_path, paths[::-1] if k % 2 else paths, SPEC.resize) for k in range(4)])
    assert sum(builds) == len(paths)
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
    c = ClipCache(tmp_path, resize=SPEC.resize)
    for p in paths:
        with c.open(p) as v:
            n = v.frames.shape[0]
            ref = resize_short_side(read_frames(p, list(range(n))).permute(0, 3, 1, 2), SPEC.resize).permute(0, 2, 3, 1)
            assert torch.equal(v.read(range(n)), ref)
    assert c.builds == 0


def test_dataloader_workers_share_the_cache(videos, tmp_path):
    from har_colab.cache import ClipCache
    cache = ClipCache(tmp_path, resize=SPEC.resize)
    plain, cached = _ds(videos, True), _ds(videos, True, cache)
    keys = [[(i, 0) for i in range(len(videos))]]
    dl = lambda ds: torch.utils.data.DataLoader(ds, batch_sampler=keys, num_workers=2, timeout=300,
                                                multiprocessing_context="forkserver")   # not a fork of this pytest process
    (a, _), = list(dl(plain)); (b, _), = list(dl(cached))
    assert torch.equal(a, b) and len(list(tmp_path.glob("*.npy"))) == len(videos)


def test_size_report_and_limit(videos, tmp_path):
    from har_colab.cache import ClipCache
    c = ClipCache(tmp_path, resize=SPEC.resize)
    r = c.plan(videos.paths, echo=None, run_dir=tmp_path / "run")
    assert r["cached"] == len(videos) and c.allowed is None
    true = sum(np.load(c.entry(p), mmap_mode="r").nbytes if c.entry(p).exists() else 0 for p in videos.paths)
    assert true == 0                                            # nothing is built by the estimate
    for p in videos.paths: c.open(p)
    true = sum(np.load(c.entry(p), mmap_mode="r").nbytes for p in videos.paths)
    assert 0.7 < r["estimated_bytes"] / true < 1.3              # probes every video here: close to the truth
    assert "clip cache: 7 videos" in (tmp_path / "run" / "events.log").read_text()
    small = ClipCache(tmp_path / "s", resize=SPEC.resize, max_gb=3.2 * r["estimated_bytes"] / 7 / 2**30)
    r2 = small.plan(videos.paths, echo=None)
    assert r2["cached"] == 3 and "caching the first 3 videos" in r2["message"]
    ds = _ds(videos, True, small)
    for i in range(len(videos)): ds[i, 0]
    assert small.builds == 3 and len(list((tmp_path / "s").glob("*.npy"))) == 3   # the rest is decoded each time


def test_train_with_local_cache_reports_the_estimate(videos, tmp_path):
    "`train --cache local --cache-dir D`: the size estimate is printed and logged, the cache filled, training works."
    data = Path(videos.paths[0]).parents[1]
    from conftest import run_cli
    p = run_cli("train", "--run-dir", tmp_path / "run", "--data", data, "--model", "tiny3d", "--no-pretrained", "--epochs", "2",
                "--batch-size", "2", "--workers", "0", "--cache", "local", "--cache-dir", tmp_path / "cache", "--cache-max-gb", "1",
                "--no-progress", "--no-plot", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "clip cache: 7 videos" in p.stdout
    assert "clip cache: 7 videos" in (tmp_path / "run" / "events.log").read_text()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 7
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["cache"] == "local" and cfg["cache_max_gb"] == 1
