"Shared helpers of the benchmarks: an in-memory clip dataset, models by name, a Trainer over in-memory batches."
import copy
import types

import torch


class MemoryClips(torch.utils.data.Dataset):
    "`n` random clips of `shape` held in memory, keyed like `ClipDataset` (`(index, epoch)`), with 8 classes."
    def __init__(self, n:int, shape:tuple, classes:int=8, seed:int=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.samples = types.SimpleNamespace(class_names=[f"c{i}" for i in range(classes)], paths=[f"v{i}" for i in range(n)])
        self.clips_per_video = 1
    def __len__(self): return len(self.x)
    def __getitem__(self, key):
        i = key[0] if isinstance(key, (tuple, list)) else key
        return self.x[i], int(self.y[i])


MODELS = {  # name -> (input C,T,H,W, batch size)
    "null (pool + linear)": ((3, 8, 56, 56), 8),   # ~no compute: the step time is the loop's own cost
    "tiny3d": ((3, 8, 56, 56), 8),
    "r3d_18": ((3, 8, 32, 32), 2),   # small input: 8 frames of 32x32 (its own is 16x112x112), so a CPU step takes ~1 s
}


def make_model(name:str, classes:int=8, seed:int=0) -> torch.nn.Module:
    "tiny3d from har_colab's registry, r3d_18 from torchvision (random init, no download)."
    torch.manual_seed(seed)
    if name.startswith("null"):
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, classes))
    if name == "tiny3d":
        from har_colab.models import create_model
        return create_model("tiny3d", classes, pretrained=False)
    import torchvision
    return torchvision.models.video.r3d_18(num_classes=classes)


def make_trainer(model, ds, run_dir, steps:int, callbacks=None, **cfg_kw):
    "A `Trainer` (config of model tiny3d, CPU, no workers) over the in-memory dataset `ds`, `steps` steps per epoch."
    from har_colab.checkpoint import RunFolder
    from har_colab.train import Trainer, TrainConfig, resolve_config
    shape, bs = MODELS["tiny3d"]
    kw = dict(run_dir=str(run_dir), data="-", model="tiny3d", pretrained=False, batch_size=cfg_kw.pop("batch_size", bs),
              workers=0, device="cpu", epochs=1, max_steps_per_epoch=steps, progress=False, plot=False, amp="off")
    kw.update(cfg_kw)
    cfg = resolve_config(TrainConfig(**kw))
    if callbacks is None:
        from har_colab.callbacks import default_callbacks
        callbacks = default_callbacks(cfg)
    val = MemoryClips(cfg.batch_size, tuple(ds.x.shape[1:]), seed=1)
    return Trainer(cfg, model, ds, val, RunFolder(run_dir).mkdir(), callbacks=callbacks, echo=lambda m: None)
