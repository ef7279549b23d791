"HMDB51 / UCF101 split loading checked against torchvision's and pytorchvideo's own split logic, on generated trees."
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from torchvision.datasets import HMDB51, UCF101
from torchvision.datasets.folder import find_classes, make_dataset

from har_colab.core import DataError
from har_colab.datasets import load_samples, subset, train_val_split


def make_hmdb51(d, classes=5, recordings=6, clips=3, seed=0, extra=()):
    "An HMDB51-like tree: root/<class>/<rec>_<n>.avi (empty) + testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt."
    rng = random.Random(seed)
    root, sd = Path(d) / "hmdb51_org", Path(d) / "testTrainMulti_7030_splits"
    sd.mkdir(parents=True)
    for c in range(classes):
        name = f"cls_{c:02d}_{'abcdefghij'[c % 10]}"
        (root / name).mkdir(parents=True)
        vids = [f"Rec!{r}_{name}_f_cm_np1_fr_med_{k}.avi" for r in range(recordings) for k in range(clips)] + list(extra)
        for v in vids: (root / name / v).write_bytes(b"")
        for split in (1, 2, 3):
            tags = [rng.choice((0, 1, 1, 1, 2, 2)) for _ in vids]
            tags[0], tags[1] = 1, 2                      # every class has train and test videos
            (sd / f"{name}_test_split{split}.txt").write_text("".join(f"{v} {t} \n" for v, t in zip(vids, tags)))
    return root, sd


def make_ucf101(d, classes=("ApplyEyeMakeup", "Basketball", "BasketballDunk", "YoYo"), groups=6, clips=3):
    "A UCF101-like tree: UCF-101/<Class>/v_<Class>_gXX_cYY.avi + ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt."
    root, sd = Path(d) / "UCF-101", Path(d) / "ucfTrainTestlist"
    sd.mkdir(parents=True)
    (sd / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    for c in classes:
        (root / c).mkdir(parents=True)
        for g in range(1, groups + 1):
            for k in range(1, clips + 1): (root / c / f"v_{c}_g{g:02d}_c{k:02d}.avi").write_bytes(b"")
    for split in (1, 2, 3):
        test_groups = {2 * split - 1, 2 * split}
        rows = [(c, f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi", g in test_groups)
                for c in classes for g in range(1, groups + 1) for k in range(1, clips + 1)]
        (sd / f"trainlist0{split}.txt").write_text("".join(f"{p} {classes.index(c) + 1}\r\n" for c, p, t in rows if not t))
        (sd / f"testlist0{split}.txt").write_text("".join(f"{p}\r\n" for c, p, t in rows if t))
    return root, sd


def torchvision_hmdb51(root, sd, split, train):
    "(paths, labels) exactly as torchvision.datasets.HMDB51 selects them, without decoding any video."
    classes, class_to_idx = find_classes(root)
    samples = make_dataset(str(root), class_to_idx, ("avi",))
    ds = object.__new__(HMDB51)
    idx = ds._select_fold([p for p, _ in samples], str(sd), split, train)
    return [samples[i][0] for i in idx], [samples[i][1] for i in idx], classes


def torchvision_ucf101(root, sd, split, train):
    classes, class_to_idx = find_classes(root)
    samples = make_dataset(str(root), class_to_idx, ("avi",))
    ds = object.__new__(UCF101); ds.root = str(root)
    idx = ds._select_fold([p for p, _ in samples], str(sd), split, train)
    return [samples[i][0] for i in idx], [samples[i][1] for i in idx], classes


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("fold", ["train", "test"])
def test_hmdb51_matches_torchvision_and_pytorchvideo(tmp_path, split, fold):
    root, sd = make_hmdb51(tmp_path)
    s = load_samples("hmdb51", root, split=split, fold=fold)
    paths, labels, classes = torchvision_hmdb51(root, sd, split, fold == "train")
    assert s.paths == paths and s.labels == labels and s.class_names == classes
    from pytorchvideo.data.hmdb51 import Hmdb51LabeledVideoPaths
    pv = Hmdb51LabeledVideoPaths.from_dir(str(sd), split_id=split, split_type=fold)
    assert sorted(str(root / p) for p, _ in pv._paths_and_labels) == sorted(s.paths)
    assert sorted((str(root / p), m["label"]) for p, m in pv._paths_and_labels) == \
        sorted((p, s.class_names[l]) for p, l in zip(s.paths, s.labels))


def test_hmdb51_finds_splits_beside_the_data_and_ignores_the_split_folder_as_a_class(tmp_path):
    root, sd = make_hmdb51(tmp_path, classes=3)
    a = load_samples("hmdb51", root)                               # parent/testTrainMulti_7030_splits
    sd.rename(root / sd.name)                                      # splits extracted inside the video folder
    b = load_samples("hmdb51", root)
    assert a.paths == b.paths and b.num_classes == 3
    c = load_samples("hmdb51", root, splits=root / sd.name, split=2, fold="test")
    assert len(c) and c.num_classes == 3


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("fold", ["train", "test"])
def test_ucf101_matches_torchvision(tmp_path, split, fold):
    root, sd = make_ucf101(tmp_path)
    s = load_samples("ucf101", root, split=split, fold=fold)
    paths, labels, classes = torchvision_ucf101(root, sd, split, fold == "train")
    assert s.paths == paths and s.labels == labels and s.class_names == classes
    assert len(s) == 4 * (2 if fold == "test" else 4) * 3
    assert len(set(s.groups)) == 4 * (2 if fold == "test" else 4)  # one group per (class, gXX)


def test_ucf101_labels_follow_classind_and_the_trainlist(tmp_path):
    # real UCF101 lists JumpingJack (46) before JumpRope (47); a plain sort (torchvision) swaps them
    root, sd = make_ucf101(tmp_path, classes=("JumpingJack", "JumpRope"))
    s = load_samples("ucf101", root)
    assert s.class_names == ["JumpingJack", "JumpRope"]
    listed = dict(l.split() for l in (sd / "trainlist01.txt").read_text().splitlines())
    assert all(listed[Path(p).parent.name + "/" + Path(p).name] == str(l + 1) for p, l in zip(s.paths, s.labels))
    assert find_classes(root)[0] == ["JumpRope", "JumpingJack"]


def one_line(excinfo): return len(str(excinfo.value).splitlines()) == 1


def test_hmdb51_errors(tmp_path):
    root, sd = make_hmdb51(tmp_path, classes=3)
    for kw, msg in [({"split": 4}, "split must be 1, 2 or 3"), ({"split": 0}, "split must be 1, 2 or 3"),
                    ({"fold": "val"}, "fold must be 'train' or 'test'"),
                    ({"splits": tmp_path / "nope"}, "HMDB51 split files (*_test_split1.txt) not found")]:
        with pytest.raises(DataError, match=None) as e: load_samples("hmdb51", root, **kw)
        assert msg in str(e.value) and one_line(e)
    lonely = tmp_path / "lonely" / "hmdb51"; (lonely / "wave").mkdir(parents=True)
    with pytest.raises(DataError) as e: load_samples("hmdb51", lonely)
    assert "not found (looked in" in str(e.value) and str(lonely / "testTrainMulti_7030_splits") in str(e.value)
    assert "--splits" in str(e.value) and one_line(e)                       # says where it looked and what to do
    with pytest.raises(DataError) as e: load_samples("hmdb51", tmp_path / "x", splits=sd)
    assert "dataset folder not found" in str(e.value)
    # a class folder without its split file
    (sd / "cls_01_b_test_split1.txt").unlink()
    with pytest.raises(DataError) as e: load_samples("hmdb51", root)
    assert "missing split file" in str(e.value) and "cls_01_b_test_split1.txt" in str(e.value) and one_line(e)
    # videos named in a split file that are not on disk: how many, and the first
    root, sd = make_hmdb51(tmp_path / "b", classes=3)
    gone = sorted((root / "cls_02_c").iterdir())[:2]
    for g in gone: g.unlink()
    with pytest.raises(DataError) as e: load_samples("hmdb51", root, fold="test")
    listed = [l.split()[0] for l in (sd / "cls_02_c_test_split1.txt").read_text().splitlines() if l.split()[1] == "2"]
    n = sum(g.name in listed for g in gone)
    assert f"{n} videos named in the HMDB51 split files are missing" in str(e.value) and one_line(e)
    # a class with no usable video in the fold
    root, sd = make_hmdb51(tmp_path / "c", classes=3)
    f = sd / "cls_00_a_test_split1.txt"
    f.write_text(f.read_text().replace(" 2 \n", " 0 \n"))
    with pytest.raises(DataError) as e: load_samples("hmdb51", root, fold="test")
    assert "class 'cls_00_a' has no test videos in split 1" in str(e.value) and one_line(e)
    # a split file for a class that has no folder
    (sd / "ghost_test_split1.txt").write_text("a_0.avi 1\n")
    with pytest.raises(DataError) as e: load_samples("hmdb51", root)
    assert "names class 'ghost'" in str(e.value)


def test_ucf101_errors(tmp_path):
    root, sd = make_ucf101(tmp_path, classes=("Archery", "Bowling"))
    with pytest.raises(DataError) as e: load_samples("ucf101", root, splits=tmp_path)
    assert "UCF101 split files" in str(e.value) and one_line(e)
    (sd / "testlist02.txt").unlink()
    with pytest.raises(DataError) as e: load_samples("ucf101", root, split=2, fold="test")
    assert "missing split file" in str(e.value) and "testlist02.txt" in str(e.value)
    for v in sorted((root / "Bowling").iterdir())[-3:]: v.unlink()
    with pytest.raises(DataError) as e: load_samples("ucf101", root)
    assert "3 videos named in the UCF101 split files are missing" in str(e.value)
    assert "first Bowling/v_Bowling_g06_c01.avi" in str(e.value) and one_line(e)
    (sd / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\r\n")
    with pytest.raises(DataError) as e: load_samples("ucf101", root, fold="test")
    assert "class 'Bowling' has no test videos" in str(e.value)
    (sd / "trainlist03.txt").write_text("Archery/v_Archery_g03_c01.avi 2\n")
    with pytest.raises(DataError) as e: load_samples("ucf101", root, split=3)
    assert "does not match" in str(e.value) and "classInd.txt" in str(e.value)


def test_hmdb51_subset_keeps_every_class_and_ignores_listing_order(tmp_path, monkeypatch):
    root, sd = make_hmdb51(tmp_path, classes=51, recordings=35, clips=4)   # ~70 train videos per class
    full = load_samples("hmdb51", root)
    assert full.num_classes == 51 and min(full.counts()) >= 55
    a = subset(full, 0.1, seed=3)
    k = [max(1, round(0.1 * n)) for n in full.counts()]              # about k per class, in whole movies
    assert all(kc <= c <= 1.5 * kc for c, kc in zip(a.counts(), k))
    assert all(sum(g == r for g in a.groups) == sum(g == r for g in full.groups) for r in set(a.groups))
    assert subset(load_samples("hmdb51", root), 0.1, seed=3).paths == a.paths      # same on every call
    # the disk lists folders and files in another order: same samples, same subset
    iterdir, glob = Path.iterdir, Path.glob
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(iterdir(self), reverse=True)))
    monkeypatch.setattr(Path, "glob", lambda self, pat: iter(random.Random(1).sample(list(glob(self, pat)), len(list(glob(self, pat))))))
    shuffled = load_samples("hmdb51", root)
    assert shuffled.paths == full.paths and subset(shuffled, 0.1, seed=3).paths == a.paths
    # group-aware validation split with HMDB51 recordings as groups
    tr, va = train_val_split(full, 0.2, seed=0)
    assert not set(tr.groups) & set(va.groups) and len(va) > 0
    assert all(c >= 1 for c in tr.counts())
    assert all(abs(v - 0.2 * n) <= 4 for v, n in zip(va.counts(), full.counts()))


# ---------------------------------------------------------------- which clips are one recording (folder format)
def clips(root, names):
    "Empty clip files under root (names relative to it)."
    for n in names:
        (Path(root) / n).parent.mkdir(parents=True, exist_ok=True); (Path(root) / n).write_bytes(b"")
    return Path(root)


def assert_grouped(tr, va, recording):
    "No recording on both sides, and every recording whole on its side."
    rec = lambda s: {recording(p) for p in s.paths}
    assert not rec(tr) & rec(va) and not set(tr.groups) & set(va.groups)
    assert len(va) > 0 and all(c >= 1 for c in tr.counts())


def test_group_pattern_keeps_a_users_takes_on_one_side(tmp_path):
    root = clips(tmp_path / "d", [f"{c}/cam{cam}_take{t}_{k:04d}.mp4" for c in ("walk", "run") for cam in (1, 2)
                                  for t in range(1, 6) for k in range(1, 5)])
    plain = load_samples("folder", root)
    assert len(set(plain.groups)) == len(plain)                    # without a rule: each file alone ...
    tr, va = train_val_split(plain, 0.2, seed=0)
    take = lambda p: (Path(p).parent.name, Path(p).stem.rsplit("_", 1)[0])
    assert {take(p) for p in tr.paths} & {take(p) for p in va.paths}   # ... and the takes straddle the split
    s = load_samples("folder", root, group_pattern=r"^(cam\d+_take\d+)")
    assert len(set(s.groups)) == 2 * 2 * 5 and s.groups[0] == str(root / "run" / "cam1_take1")
    for seed in range(5):
        tr, va = train_val_split(s, 0.2, seed=seed)
        assert_grouped(tr, va, take)
        assert va.counts() == [8, 8]                               # 2 takes of 4 clips per class: 20%


def test_a_sub_folder_per_recording_keeps_its_clips_together(tmp_path):
    root = clips(tmp_path / "d", [f"{c}/session_{r}/{sub}clip{k}.mp4" for c in ("jump", "sit") for r in range(6)
                                  for k in range(3) for sub in ("", "x/")])
    s = load_samples("folder", root)
    assert len(set(s.groups)) == 12 and s.groups[0] == str(root / "jump" / "session_0")   # deeper files too
    tr, va = train_val_split(s, 0.3, seed=1)
    assert_grouped(tr, va, lambda p: Path(p).relative_to(root).parts[:2])
    assert all(n % 6 == 0 for n in va.counts())


def test_group_pattern_that_misses_files_says_so_once(tmp_path):
    root = clips(tmp_path / "d", ["a/take1_1.mp4", "a/take1_2.mp4", "a/odd.mp4", "b/take2_1.mp4", "b/weird.mp4"])
    with pytest.warns(UserWarning) as w: s = load_samples("folder", root, group_pattern=r"take\d+")   # no group: the match
    assert len(w) == 1 and "does not match 2 of 5 file names" in str(w[0].message) and "recording of its own" in str(w[0].message)
    g = dict(zip((Path(p).name for p in s.paths), s.groups))
    assert g["take1_1.mp4"] == g["take1_2.mp4"] == str(root / "a" / "take1") and g["odd.mp4"] == str(root / "a" / "odd.mp4")
    with pytest.raises(Exception) as e: load_samples("folder", root, group_pattern="take(")
    assert "not a valid regular expression" in str(e.value) and one_line(e)


def test_official_recording_rules_are_reusable(tmp_path):
    from har_colab.datasets import RECORDING_PATTERNS, recording_id
    root, _ = make_hmdb51(tmp_path, classes=2, recordings=4, clips=3)
    s = load_samples("hmdb51", root)
    assert s.groups == [recording_id(p, RECORDING_PATTERNS["hmdb51"]) for p in s.paths]
    tr, va = train_val_split(s, 0.25, seed=0)                      # a validation set out of the official training split
    assert not set(tr.groups) & set(va.groups)
    root, _ = make_ucf101(tmp_path / "u")
    s = load_samples("ucf101", root)
    assert s.groups == [recording_id(p, RECORDING_PATTERNS["ucf101"]) for p in s.paths] and len(set(s.groups)) == 4 * 4


def test_cli_group_pattern_reaches_config_json_and_the_split(tmp_path):
    import json, shutil
    from conftest import run_cli
    from har_colab.synthetic import make_synthetic_dataset
    made = make_synthetic_dataset(tmp_path / "made", classes=2, videos_per_class=12, frames=10, size=(32, 32))
    data = tmp_path / "mine"
    for c in sorted(p.name for p in made.iterdir() if p.is_dir()):
        for i, v in enumerate(sorted((made / c).glob("*.mp4"))):
            (data / c).mkdir(parents=True, exist_ok=True); shutil.copy(v, data / c / f"cam1_take{i // 3}_{i % 3:04d}.mp4")
    run = tmp_path / "run"
    args = ["train", "--run-dir", run, "--data", data, "--model", "tiny3d", "--no-pretrained", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "2", "--workers", "0", "--val-fraction", "0.25", "--eval-clips", "1",
            "--no-plot", "--no-tensorboard", "--no-progress", "--cache", "none"]
    import contextlib, io
    from har_colab.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):                              # a refusal (it never trains): in this process
        assert main([str(a) for a in args] + ["--group-pattern", "^(cam\\d+_take\\d+"]) == 2
    assert len(err.getvalue().strip().splitlines()) == 1 and "not a valid regular expression" in err.getvalue()
    assert not run.exists()
    r = run_cli(*args, "--group-pattern", "^(cam\\d+_take\\d+)", timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["group_pattern"] == "^(cam\\d+_take\\d+)"
    saved = json.loads((run / "samples.json").read_text())
    take = lambda p: (Path(p).parent.name, Path(p).stem.rsplit("_", 1)[0])
    tr, va = ({take(p) for p in saved[k]["paths"]} for k in ("train", "val"))
    assert va and not tr & va and len(tr | va) == 8                 # 4 takes per class, each on one side


def test_three_sets_of_ucf101_validation_from_the_training_list_by_group_and_subset_from_what_is_left(tmp_path):
    "Issue 27: val carved from the official training list in whole gNN groups, test = the official test list, subset after."
    from har_colab.build import build_sets
    from har_colab.config import TrainConfig, resolve_config
    root, _ = make_ucf101(tmp_path, groups=8)
    cfg = lambda **kw: resolve_config(TrainConfig(data=str(root), format="ucf101", model="tiny3d", pretrained=False, **kw))
    train, val, test = build_sets(cfg(val_videos=3))
    official = load_samples("ucf101", root)
    assert test.paths == load_samples("ucf101", root, fold="test").paths
    assert val.counts() == [3] * 4 and train.counts() == [15] * 4            # one group of 3 clips per class
    assert set(val.paths) | set(train.paths) == set(official.paths) and not set(val.groups) & set(train.groups)
    sub_train, sub_val, _ = build_sets(cfg(val_videos=3, subset=0.15))
    assert sub_val.paths == val.paths                                        # the same validation set for every subset
    assert sub_train.counts() == [3] * 4 and set(sub_train.paths) <= set(train.paths)   # round(0.15 * 18) = 3: one group
    assert all(sum(g == r for g in sub_train.groups) == 3 for r in set(sub_train.groups))
    tr, va, te = build_sets(cfg(protocol="last-epoch"))
    assert (va, tr.paths) == (None, official.paths)
