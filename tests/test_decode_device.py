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
