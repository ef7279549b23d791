"""Profile target for py-spy: ClipDataset (decord, no cache) over the bench_input videos, 20 epochs, workers 0.

    PYTHONPATH=. py-spy record -r 200 -f raw -o profile.txt -- python benchmarks/profile_input.py
"""
import sys, torch, warnings
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bench_input import SPEC, WORK, make_videos
from har_colab.clips import ClipDataset
from har_colab.datasets import load_samples
torch.set_num_threads(1)
s = load_samples("folder", make_videos(WORK/"hmdb_like", 3))
ds = ClipDataset(s, SPEC, train=True)
keys=[(i % len(ds), e) for e in range(20) for i in range(len(ds))]
for x, y in torch.utils.data.DataLoader(ds, batch_sampler=[keys[i:i+4] for i in range(0,len(keys),4)]): pass
