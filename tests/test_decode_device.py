"""--decode-device cuda (torchcodec's NVDEC decoder): refused in one line where it cannot work, and the data path it
takes (no DataLoader workers, nothing pinned, items on the GPU). Decoding itself on a GPU is measured by
benchmarks/gpu_check.py where one is lent; here CUDA is mocked where a test needs it."""
from unittest import mock

import torch

from conftest import run_cli
from har_colab.clips import ClipDataset
from har_colab.config import config_diff
from har_colab.datasets import load_samples
from har_colab.models import get_spec
from har_colab.train import loader_settings


def _one_line_exit_2(r):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_decode_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, small_data):
    run = tmp_path / "run"
    args = ("train", "--run-dir", run, "--data", small_data, "--model", "tiny3d", "--no-pretrained", "--epochs", "1",
            "--workers", "0", "--no-progress", "--decode-device", "cuda")
    line = _one_line_exit_2(run_cli(*args))
    assert "--decode-device cuda" in line and "no CUDA GPU is visible" in line and "--decode-device cpu" in line, line
    assert not (run / "config.json").exists() and not (run / "metrics.csv").exists() and not (run / "probe.json").exists()
    line = _one_line_exit_2(run_cli(*args, "--cache", "local"))     # and the cache of CPU-decoded clips with it
    assert "--cache none" in line, line


def test_gpu_decoding_reads_in_the_main_process_without_pinning(small_data):
    samples = load_samples("folder", small_data)
    spec = get_spec("tiny3d")
    cpu, gpu = ClipDataset(samples, spec, train=True), ClipDataset(samples, spec, train=True, decode_device="cuda:1")
    assert gpu.backend == "torchcodec" and gpu.decode_device == torch.device("cuda:1")
    assert loader_settings(2, cpu, "cuda") == (2, True)     # CPU decoding: workers, pinned host memory for the copy
    assert loader_settings(2, gpu, "cuda") == (0, False)    # GPU decoding: this process, items already on the GPU
    assert loader_settings(2, cpu, "cpu") == (2, False)


def test_gpu_decoder_gets_the_device_and_frames_stay_where_it_put_them(small_data):
    "The torchcodec backend hands `device` to torchcodec's VideoDecoder, skips its CPU Resize, and reports a CPU fallback."
    import torchcodec.decoders
    from har_colab.video import open_video
    path = load_samples("folder", small_data).paths[0]
    real, seen = torchcodec.decoders.VideoDecoder, []

    class FakeGpuDecoder(real):              # decodes on the CPU (there is no GPU here), as a fallback would
        def __init__(self, *a, device=None, **kw):
            seen.append((device, kw.get("transforms")))
            super().__init__(*a, **kw)
        cpu_fallback = True

    with mock.patch.object(torchcodec.decoders, "VideoDecoder", FakeGpuDecoder), \
         mock.patch.object(torch.Tensor, "to", lambda self, *a, **k: self):   # the copy to the GPU: a no-op here
        with open_video(path, "torchcodec", size=False, short_side=32, device="cuda:0") as v:
            x = v.read([0, 3])
    assert seen == [("cuda:0", None)]                      # on the GPU: torch resizes (torchcodec's Resize is a CPU transform)
    assert x.shape[0] == 2 and tuple(x.shape[1:3]) == (32, 32) and v.cpu_fallback and v.resized_by == "torch"


def test_decode_device_may_change_on_resume():
    assert config_diff({"decode_device": "cpu"}, {"decode_device": "cuda"}) == []


# --- issue 26: a file NVDEC accepts and then fails on mid-decode ---

def _nvdec_fails_on(bad_path, tries):
    "A ClipDataset that 'decodes on the GPU' (really on the CPU) where the GPU decoder fails mid-decode on `bad_path`."
    from har_colab.core import DataError

    class FakeGpuDataset(ClipDataset):
        on_gpu = True                                   # the paths of a GPU-decoding dataset, without a GPU
        def _open(self, path, backend=None, cpu=False):
            gpu = (backend or self.backend) == self.backend and not cpu
            tries.append((str(path), gpu))
            video = super()._open(path, backend, cpu=True)
            if gpu and str(path) == str(bad_path):       # NVDEC opened it, then fails on its frames
                def read(indices): raise DataError(f"cannot decode {path}: NVDEC: decode error (fake)")
                video.read = read
            return video
    return FakeGpuDataset


def test_a_file_nvdec_fails_on_decodes_on_the_cpu_for_the_rest_of_the_run(small_data, tmp_path):
    import warnings
    from har_colab.clips import GPU_FAILED
    samples = load_samples("folder", small_data)
    spec = get_spec("tiny3d")
    bad, tries = samples.paths[0], []
    ds = _nvdec_fails_on(bad, tries)(samples, spec, train=True, run_dir=tmp_path, normalize=False)
    ref = ClipDataset(samples, spec, train=True, backend="torchcodec", normalize=False)     # torchcodec on the CPU
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = [ds[(0, epoch)][0] for epoch in range(3)] + [ds[(1, 0)][0]]
    gpu_tries = [g for p, g in tries if p == str(bad)]
    assert gpu_tries.count(True) == 1 and len(gpu_tries) == 4, tries     # the GPU once, then the CPU straight away
    assert [torch.equal(a, ref[(0, e)][0]) for a, e in zip(got, range(3))] == [True] * 3     # the CPU decoder's clips
    assert ds.cpu_files == {str(bad)} and ds.cpu_decoded == [bad]
    ours = [str(w.message) for w in said if "GPU decoder failed mid-decode" in str(w.message)]
    assert len(ours) == 1 and "--decode-device cpu" in ours[0], [str(w.message) for w in said]
    log = (tmp_path / "events.log").read_text()
    assert log.count(f"{GPU_FAILED}{bad}\n") == 1 and log.count("GPU decoder failed mid-decode") == 1, log
    # resumed (a new dataset on the same run folder): the file goes to the CPU without a GPU try, and nothing is said again
    tries.clear()
    again = _nvdec_fails_on(bad, tries)(samples, spec, train=True, run_dir=tmp_path, normalize=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert torch.equal(again[(0, 1)][0], got[1])
    assert tries == [(str(bad), False)] and not said
    assert (tmp_path / "events.log").read_text() == log


def test_start_up_check_names_the_cure_that_fits(small_data, monkeypatch):
    "NVDEC failing on the first video's codec names --decode-device cpu; a torchcodec without CUDA names its CUDA build."
    import dataclasses
    import pytest
    import har_colab.build as build
    from har_colab.config import TrainConfig
    from har_colab.core import ConfigError, DataError
    from har_colab.video import open_video
    path = load_samples("folder", small_data).paths[0]
    cfg = dataclasses.replace(TrainConfig(data=str(small_data)), decode_device="cuda")
    for error, cure, not_cure in (("NVDEC: decode error", "--decode-device cpu (with --cache local", "CUDA build"),
                                  ("Failed to get current CUDA device", "install its CUDA build", "NVDEC cannot decode")):
        def fake_open(p, backend, size=True, device="cpu", _e=error, **kw):
            if torch.device(device).type == "cuda": raise DataError(f"cannot decode {p}: {_e}")
            return open_video(p, backend, size=size, **kw)
        monkeypatch.setattr(build, "open_video", fake_open)
        monkeypatch.setattr(build, "backend_available", lambda name: True)
        with pytest.raises(ConfigError) as e: build.gpu_decode_device(cfg, torch.device("cuda:0"), path)
        assert cure in str(e.value) and not_cure not in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
