"""prepare: RAR archives written here (RAR 4, store method), HMDB51's rar of rars, the CLI, loopback HTTP downloads
(resume, restart, checksum), unsafe archive members, and Google Drive ids. All offline."""
import hashlib
import http.server
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest

import har_colab.prepare as prep
from har_colab.core import DataError
from har_colab.datasets import load_samples
from har_colab.prepare import MARKER, download_url, extract_archive, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
needs_unar = pytest.mark.skipif(shutil.which("unar") is None or shutil.which("lsar") is None, reason="needs unar/lsar")


# ---------------------------------------------------------------- RAR 4 writer (store method, no compression)
def _block(htype, flags, body):
    "A RAR 4 block: HEAD_CRC (low 16 bits of the CRC32 of the rest), HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE, body."
    rest = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def rar4(entries):
    "RAR 4 archive bytes. entries: (name, bytes) files, (name, None) folders, (name, ('link', target)) symlinks."
    out = [b"Rar!\x1a\x07\x00", _block(0x73, 0, b"\x00" * 6)]       # marker block, archive header (2+4 reserved bytes)
    dos_time = (31 << 25) | (3 << 21) | (13 << 16) | (7 << 11)      # 2011-03-13 07:00:00
    for name, data in entries:
        flags, attr = 0x8000, 0o100644                              # LONG_BLOCK: ADD_SIZE (packed size) follows
        if data is None: data, flags, attr = b"", flags | 0xE0, 0o40755   # dictionary bits 111 = directory
        elif isinstance(data, tuple): data, attr = data[1].encode(), 0o120777
        n = name.replace("/", "\\").encode()                        # RAR stores paths with backslashes
        # PACK_SIZE UNP_SIZE HOST_OS(3=Unix) FILE_CRC FTIME UNP_VER(20) METHOD(0x30=store) NAME_SIZE ATTR NAME
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), dos_time, 20, 0x30, len(n), attr) + n
        out += [_block(0x74, flags, body), data]
    out.append(_block(0x7B, 0x4000, b""))                           # end of archive
    return b"".join(out)


def write(path, data):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True); path.write_bytes(data)
    return path


HMDB = {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
                       "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi", "Brunette_brush_hair_h_cm_np1_le_goo_0.avi"],
        "cartwheel": ["Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", "Bodenturnen_cartwheel_f_cm_np1_le_med_0.avi",
                      "Cartwheel_cartwheel_f_cm_np1_ri_med_0.avi"]}


def hmdb51_archives(d):
    "hmdb51_org.rar (one rar per class, each holding <class>/<video>.avi) and test_train_splits.rar."
    inner = {c: rar4([(c, None)] + [(f"{c}/{v}", f"{c}:{v}".encode()) for v in vids]) for c, vids in HMDB.items()}
    org = write(Path(d) / "hmdb51_org.rar", rar4([(f"{c}.rar", data) for c, data in inner.items()]))
    lines = {c: "".join(f"{v} {1 if i % 2 == 0 else 2} \n" for i, v in enumerate(vids)) for c, vids in HMDB.items()}
    splits = write(Path(d) / "test_train_splits.rar", rar4([("testTrainMulti_7030_splits", None)] + [
        (f"testTrainMulti_7030_splits/{c}_test_split{k}.txt", lines[c].encode()) for c in HMDB for k in (1, 2, 3)]))
    return org, splits


@needs_unar
def test_lsar_and_unar_accept_our_rar4(tmp_path):
    a = write(tmp_path / "t.rar", rar4([("cls", None), ("cls/a.avi", b"hello"), ("cls/b.avi", b"")]))
    r = subprocess.run(["lsar", "-t", str(a)], capture_output=True, text=True)       # -t: test CRCs
    assert r.returncode == 0 and "a.avi" in r.stdout, r.stdout + r.stderr
    subprocess.run(["unar", "-q", "-D", "-o", str(tmp_path / "x"), str(a)], check=True)
    assert (tmp_path / "x" / "cls" / "a.avi").read_bytes() == b"hello"
    assert prep.archive_kind(a) == "rar" and [m.name for m in prep.archive_members(a)] == ["cls/", "cls/a.avi", "cls/b.avi"]


@needs_unar
def test_prepare_hmdb51_rar_of_rars(tmp_path):
    org, splits = hmdb51_archives(tmp_path / "src")
    out = tmp_path / "data"
    root = prepare_dataset("hmdb51", org, out, splits_source=splits, progress=False)
    assert root == out / "hmdb51" and (root / MARKER).is_file()
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["brush_hair", "cartwheel"]
    assert not list(root.rglob("*.rar"))                                         # inner archives expanded and removed
    assert (root / "cartwheel" / HMDB["cartwheel"][0]).read_bytes() == f"cartwheel:{HMDB['cartwheel'][0]}".encode()
    assert sorted(p.name for p in (out / "testTrainMulti_7030_splits").glob("*.txt"))[0] == "brush_hair_test_split1.txt"
    tr, te = load_samples("hmdb51", root), load_samples("hmdb51", root, fold="test")
    assert (len(tr), len(te)) == (4, 3) and tr.class_names == ["brush_hair", "cartwheel"]
    assert tr.groups[0] == str(root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo")
    assert sorted(p.name for p in out.iterdir()) == ["hmdb51", "testTrainMulti_7030_splits"]   # no temp folders
    # idempotent: a second run finds the marker and extracts nothing
    (root / "brush_hair" / HMDB["brush_hair"][3]).write_bytes(b"kept")
    assert prepare_dataset("hmdb51", org, out, splits_source=splits, progress=False) == root
    assert (root / "brush_hair" / HMDB["brush_hair"][3]).read_bytes() == b"kept"


@needs_unar
def test_prepare_hmdb51_without_splits_extracts_and_says_what_is_missing(tmp_path):
    org, splits = hmdb51_archives(tmp_path / "src")
    notes = []
    root = prepare_dataset("hmdb51", org, tmp_path / "data", progress=False, echo=notes.append)
    assert root == tmp_path / "data" / "hmdb51" and (root / "cartwheel" / HMDB["cartwheel"][0]).is_file()
    assert len(notes) == 1 and len(notes[0].splitlines()) == 1
    assert "still missing: test_train_splits.rar" in notes[0] and prep.OFFICIAL["hmdb51"]["splits"].url in notes[0]
    assert f"--source {org} --out {tmp_path / 'data'} --splits-source official" in notes[0]
    # the command it names adds them (here with the local archive): nothing is extracted twice
    assert prepare_dataset("hmdb51", org, tmp_path / "data", splits_source=splits, progress=False, echo=notes.append) == root
    assert len(notes) == 1 and len(load_samples("hmdb51", root, fold="test")) == 3


@needs_unar
def test_cli_prepare_hmdb51(tmp_path):
    org, splits = hmdb51_archives(tmp_path / "src")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "har_colab.cli", "prepare", "hmdb51", "--source", str(org), "--out", "data",
           "--splits-source", str(splits)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"dataset ready: data{os.sep}hmdb51" in r.stdout
    assert len(load_samples("hmdb51", tmp_path / "data" / "hmdb51", split=3, fold="test")) == 3
    bad = subprocess.run(cmd[:6] + [str(tmp_path / "nope.rar"), "--out", "d2"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "source not found" in bad.stderr


@needs_unar
def test_cli_prepare_videos_without_splits_is_exit_0(tmp_path, capsys):
    from har_colab.cli import main
    org, _ = hmdb51_archives(tmp_path / "src")
    assert main(["prepare", "hmdb51", "--source", str(org), "--out", str(tmp_path / "d")]) == 0     # in-process: seconds
    out = capsys.readouterr().out
    assert "still missing: test_train_splits.rar" in out and "dataset ready" not in out
    assert (tmp_path / "d" / "hmdb51" / "cartwheel").is_dir()
    assert main(["prepare", "folder", "--source", "official", "--out", str(tmp_path / "x")]) == 2
    assert "--source official is for hmdb51 and ucf101" in capsys.readouterr().err


@needs_unar
def test_prepare_ucf101_rar_and_split_zip(tmp_path):
    classes = ["ApplyEyeMakeup", "YoYo"]
    vids = {c: [f"v_{c}_g{g:02d}_c01.avi" for g in (1, 2, 8, 9)] for c in classes}
    ucf = write(tmp_path / "UCF101.rar", rar4([("UCF-101", None)] + [(f"UCF-101/{c}/{v}", b"x") for c in classes for v in vids[c]]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\r\n2 YoYo\r\n")
        for k in (1, 2, 3):
            z.writestr(f"ucfTrainTestlist/trainlist0{k}.txt", "".join(f"{c}/{v} {i + 1}\r\n" for i, c in enumerate(classes) for v in vids[c][2:]))
            z.writestr(f"ucfTrainTestlist/testlist0{k}.txt", "".join(f"{c}/{v}\r\n" for c in classes for v in vids[c][:2]))
    lists = write(tmp_path / "UCF101TrainTestSplits-RecognitionTask.zip", buf.getvalue())
    root = prepare_dataset("ucf101", ucf, tmp_path / "data", splits_source=lists, progress=False)
    assert root == tmp_path / "data" / "UCF-101" and sorted(p.name for p in root.iterdir() if p.is_dir()) == classes
    s = load_samples("ucf101", root, split=2, fold="test")
    assert s.labels == [0, 0, 1, 1] and len(set(s.groups)) == 4


# ---------------------------------------------------------------- unsafe archives
def zip_bytes(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            if isinstance(data, tuple):                              # a symlink member
                info = zipfile.ZipInfo(name); info.external_attr = (0o120777 << 16); z.writestr(info, data[1])
            else: z.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "link" else tarfile.LNKTYPE
                info.linkname = data[1]; t.addfile(info)
            else: info.size = len(data); t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


UNSAFE = [
    ("zip-dotdot.zip", zip_bytes, [("ok/a.avi", b"1"), ("../evil.txt", b"x")], "'../evil.txt'"),
    ("zip-nested-dotdot.zip", zip_bytes, [("ok/../../evil.txt", b"x")], "'ok/../../evil.txt'"),
    ("zip-absolute.zip", zip_bytes, [("ok/a.avi", b"1"), ("/tmp/evil.txt", b"x")], "'/tmp/evil.txt'"),
    ("zip-symlink.zip", zip_bytes, [("ok/ln", ("link", "../../outside"))], "'ok/ln' -> '../../outside'"),
    ("tar-dotdot.tar.gz", tar_bytes, [("ok/a.avi", b"1"), ("../evil.txt", b"x")], "'../evil.txt'"),
    ("tar-absolute.tar.gz", tar_bytes, [("/tmp/evil.txt", b"x")], "'/tmp/evil.txt'"),
    ("tar-symlink.tar.gz", tar_bytes, [("ok/ln", ("link", "/etc")), ("ok/ln/evil.txt", b"x")], "symlink 'ok/ln' -> '/etc'"),
    ("tar-symlink-rel.tar.gz", tar_bytes, [("ok/ln", ("link", "../..")), ("ok/ln/evil.txt", b"x")], "symlink 'ok/ln' -> '../..'"),
    ("tar-symlink-chain.tar.gz", tar_bytes, [("x/l1", ("link", "..")), ("x/l1/l2", ("link", "..")), ("x/l1/l2/evil.txt", b"x")],
     "symlink 'x/l1/l2' -> '..'"),
    ("tar-hardlink.tar.gz", tar_bytes, [("ok/hl", ("hard", "../evil.txt"))], "hardlink 'ok/hl' -> '../evil.txt'"),
    ("rar-dotdot.rar", rar4, [("ok", None), ("ok/a.avi", b"1"), ("../evil.txt", b"x")], "'../evil.txt'"),
    ("rar-symlink.rar", rar4, [("ok/ln", ("link", "../../outside"))], "'ok/ln' -> '../../outside'"),
]


@pytest.mark.parametrize("name,make,entries,named", UNSAFE, ids=[u[0] for u in UNSAFE])
def test_unsafe_members_are_refused_before_writing(tmp_path, name, make, entries, named):
    if name.startswith("rar") and shutil.which("unar") is None: pytest.skip("needs unar")
    a = write(tmp_path / "src" / name, make(entries))
    box = tmp_path / "box"; box.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(DataError) as e: extract_archive(a, box / "out", progress=False)
    assert named in str(e.value) and "outside the target folder" in str(e.value) and name in str(e.value)
    assert {p for p in tmp_path.rglob("*")} == before                 # nothing written anywhere, no temp folder left
    assert not Path("/tmp/evil.txt").exists()
    with pytest.raises(DataError): prepare_dataset("folder", a, box / "data", progress=False)
    assert not list((box / "data").iterdir())


def test_failed_extraction_leaves_no_folder_under_the_final_name(tmp_path, monkeypatch):
    a = write(tmp_path / "d.zip", zip_bytes([("walk/a.mp4", b"1"), ("run/b.mp4", b"2")]))
    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(prep, "_expand_nested", boom)
    with pytest.raises(OSError): extract_archive(a, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zip"]
    monkeypatch.undo()
    assert (extract_archive(a, tmp_path / "out", progress=False) / MARKER).is_file()
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not extracted by har-colab"): extract_archive(a, tmp_path / "mine", progress=False)


# ---------------------------------------------------------------- HTTP downloads on 127.0.0.1
class Server:
    "A loopback HTTP server: /f/NAME honours Range, /norange/NAME ignores it, /cut/NAME sends half then hangs up once; /NAME as /f/NAME."
    def __init__(self, files):
        self.files, self.ranges, self.cut_done = files, [], set()
        srv = self
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                _, mode, name = self.path.split("/", 2)
                if mode not in ("f", "norange", "cut"): mode, name = "f", self.path[1:]     # /<path>: a mirror
                data = srv.files.get(name)
                if data is None: return self.send_error(404)
                rng = self.headers.get("Range"); srv.ranges.append((self.path, rng))
                start = int(rng[6:].split("-")[0]) if rng and mode != "norange" else 0
                if start >= len(data) and rng and mode != "norange":
                    self.send_response(416); self.send_header("Content-Range", f"bytes */{len(data)}"); self.end_headers(); return
                self.send_response(206 if start else 200)
                if start: self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start)); self.end_headers()
                body = data[start:]
                if mode == "cut" and name not in srv.cut_done:
                    srv.cut_done.add(name); body = body[:len(body) // 2]
                self.wfile.write(body)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def server():
    s = Server({"data.bin": os.urandom(300_000) + b"end"})
    yield s
    s.httpd.shutdown(); s.httpd.server_close()


def test_download_resumes_an_interrupted_transfer(tmp_path, server):
    data = server.files["data.bin"]; sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "dl" / "data.bin"
    with pytest.raises(DataError, match="interrupted .* run again to resume"):
        download_url(server.url + "/cut/data.bin", dest, checksum=sha, progress=False, chunk=4096)
    part = dest.with_name("data.bin.part")
    assert not dest.exists() and 0 < part.stat().st_size < len(data)
    got = download_url(server.url + "/cut/data.bin", dest, checksum=sha, progress=False)
    assert got == dest and dest.read_bytes() == data and not part.exists()
    assert server.ranges[-1][1] == f"bytes={len(data) // 2}-"           # asked only for the rest
    n = len(server.ranges)
    assert download_url(server.url + "/cut/data.bin", dest, checksum=sha, progress=False) == dest
    assert len(server.ranges) == n                                      # already there: no request


def test_download_restarts_when_range_is_ignored_or_part_is_whole(tmp_path, server):
    data = server.files["data.bin"]
    dest = tmp_path / "data.bin"; part = tmp_path / "data.bin.part"
    part.write_bytes(b"garbage-from-another-file")
    assert download_url(server.url + "/norange/data.bin", dest, progress=False).read_bytes() == data
    part.write_bytes(data); dest.unlink()                               # killed between the last byte and the rename
    assert download_url(server.url + "/f/data.bin", dest, checksum="md5:" + hashlib.md5(data).hexdigest(),
                        progress=False).read_bytes() == data
    assert server.ranges[-1][1] == f"bytes={len(data)}-"


def test_download_checksum_mismatch_leaves_no_file(tmp_path, server):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError) as e: download_url(server.url + "/f/data.bin", dest, checksum="0" * 64, progress=False)
    assert "checksum mismatch" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert "set aside as" in str(e.value) and "run again" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin.bad"]    # moved aside, never under the good name
    assert (tmp_path / "data.bin.bad").read_bytes() == server.files["data.bin"]
    with pytest.raises(DataError, match="HTTP 404"): download_url(server.url + "/f/missing.bin", dest, progress=False)


def test_prepare_from_url_with_checksum(tmp_path, server):
    server.files["motion.zip"] = zip_bytes([("motion/walk/a.mp4", b"1"), ("motion/run/b.mp4", b"2")])
    sha = hashlib.sha256(server.files["motion.zip"]).hexdigest()
    root = prepare_dataset("folder", server.url + "/f/motion.zip", tmp_path / "data", checksum=sha, progress=False)
    assert root == tmp_path / "data" / "motion" and (tmp_path / "data" / "downloads" / "motion.zip").is_file()
    assert load_samples("folder", root).class_names == ["run", "walk"]
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare_dataset("folder", server.url + "/f/motion.zip", tmp_path / "d2", checksum="md5:" + "0" * 32, progress=False)
    assert [p.name for p in (tmp_path / "d2" / "downloads").iterdir()] == ["motion.zip.bad"]


# ---------------------------------------------------------------- Google Drive
FID = "1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUvW"


@pytest.mark.parametrize("source", [f"https://drive.google.com/file/d/{FID}/view?usp=sharing",
                                    f"https://drive.google.com/open?id={FID}", FID])
def test_drive_sources_go_through_gdown(tmp_path, monkeypatch, source):
    import gdown
    calls = []
    def fake_download(url=None, output=None, quiet=False, id=None, resume=False, **kw):
        calls.append(dict(url=url, id=id, output=output, resume=resume))
        Path(output).write_bytes(zip_bytes([("clips/walk/a.mp4", b"1"), ("clips/run/b.mp4", b"2")]))
        return output
    monkeypatch.setattr(gdown, "download", fake_download)
    root = prepare_dataset("folder", source, tmp_path / "data", progress=False)
    assert calls == [dict(url=None, id=FID, output=str(tmp_path / "data" / "downloads" / f"{FID}.part"), resume=True)]
    assert (tmp_path / "data" / "downloads" / FID).is_file() and load_samples("folder", root).num_classes == 2
    prepare_dataset("folder", source, tmp_path / "data", progress=False)
    assert len(calls) == 1                                              # downloaded once


def test_drive_failure_is_one_line(tmp_path, monkeypatch):
    import gdown
    def fail(**kw): raise RuntimeError("Cannot retrieve the public link of the file.\nYou may need to change the permission")
    monkeypatch.setattr(gdown, "download", fail)
    with pytest.raises(DataError) as e: prepare_dataset("hmdb51", FID, tmp_path / "data", progress=False)
    assert FID in str(e.value) and "Anyone with the link" in str(e.value) and len(str(e.value).splitlines()) == 1


# ---------------------------------------------------------------- --source official, from a loopback mirror
HMDB_VIDEOS = "wp-content/uploads/2013/10/hmdb51_org.rar"
HMDB_SPLITS = "wp-content/uploads/2013/10/test_train_splits.rar"


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    "The official HMDB51 archives (made here) on a loopback server that HAR_COLAB_OFFICIAL_MIRROR points at."
    org, splits = hmdb51_archives(tmp_path / "made")
    s = Server({HMDB_VIDEOS: org.read_bytes(), HMDB_SPLITS: splits.read_bytes()})
    monkeypatch.setenv("HAR_COLAB_OFFICIAL_MIRROR", s.url)
    yield s
    s.httpd.shutdown(); s.httpd.server_close()


def official_as_made(monkeypatch, server):
    "OFFICIAL with the checksums of the archives the mirror serves (the real ones would not match them)."
    md5 = lambda name: "md5:" + hashlib.md5(server.files[name]).hexdigest()
    monkeypatch.setitem(prep.OFFICIAL, "hmdb51", {
        "videos": prep.OFFICIAL["hmdb51"]["videos"]._replace(checksum=md5(HMDB_VIDEOS)),
        "splits": prep.OFFICIAL["hmdb51"]["splits"]._replace(checksum=md5(HMDB_SPLITS), size=len(server.files[HMDB_SPLITS]))})


def test_official_urls_sizes_and_checksums_are_the_published_ones():
    o = prep.OFFICIAL
    assert o["hmdb51"]["videos"].url == "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
    assert o["hmdb51"]["splits"].url == "https://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
    assert o["ucf101"]["videos"].url == "https://www.crcv.ucf.edu/datasets/human-actions/ucf101/UCF101.rar"
    assert o["ucf101"]["splits"].url == "https://www.crcv.ucf.edu/wp-content/uploads/2019/03/UCF101TrainTestSplits-RecognitionTask.zip"
    assert o["hmdb51"]["splits"].checksum == "md5:15e67781e70dcfbdce2d7dbb9b3344b5"    # torchvision.datasets.HMDB51
    assert o["ucf101"]["splits"].size == 113943                                       # tensorflow-datasets
    for f in (f for k in o.values() for f in k.values()):
        if f.checksum: prep.parse_checksum(f.checksum)


@needs_unar
def test_official_download_is_interrupted_resumed_kept_and_not_repeated(tmp_path, monkeypatch, mirror):
    official_as_made(monkeypatch, mirror)
    videos = mirror.files[HMDB_VIDEOS]
    downloads = tmp_path / "home" / "downloads"                        # $HAR_COLAB_HOME/downloads outside Colab
    monkeypatch.setenv("HAR_COLAB_FAIL_DOWNLOAD_AFTER_BYTES", str(len(videos) // 3))
    with pytest.raises(DataError) as e: prepare_dataset("hmdb51", "official", tmp_path / "data", progress=False, echo=None)
    assert "interrupted" in str(e.value) and "run again to resume" in str(e.value) and len(str(e.value).splitlines()) == 1
    part = downloads / "hmdb51_org.rar.part"
    assert part.read_bytes() == videos[:len(videos) // 3] and not (tmp_path / "data" / "hmdb51").exists()
    monkeypatch.delenv("HAR_COLAB_FAIL_DOWNLOAD_AFTER_BYTES")           # (set, it would break the split archive too)
    said = []
    root = prepare_dataset("hmdb51", "official", tmp_path / "data", progress=False, echo=said.append)
    assert ("/" + HMDB_VIDEOS, f"bytes={len(videos) // 3}-") in mirror.ranges     # asked only for the rest
    assert (downloads / "hmdb51_org.rar").read_bytes() == videos and not part.exists()
    assert (downloads / "test_train_splits.rar").is_file() and (downloads / "hmdb51_org.rar.verified").is_file()
    assert any("downloading test_train_splits.rar" in m for m in said)
    assert root == tmp_path / "data" / "hmdb51" and len(load_samples("hmdb51", root, fold="test")) == 3
    # a new session (fresh local disk): the archives on Drive are neither downloaded nor hashed again, only extracted
    n = len(mirror.ranges)
    monkeypatch.setattr(prep, "file_digest", lambda *a, **k: pytest.fail("hashed a verified archive again"))
    root2 = prepare_dataset("hmdb51", "official", tmp_path / "vm2", progress=False, echo=None)
    assert len(mirror.ranges) == n and len(load_samples("hmdb51", root2)) == 4


def test_official_archive_with_a_wrong_size_or_checksum_is_set_aside(tmp_path, monkeypatch, mirror):
    official_as_made(monkeypatch, mirror)
    f = prep.OFFICIAL["hmdb51"]["splits"]
    monkeypatch.setitem(prep.OFFICIAL["hmdb51"], "splits", f._replace(size=f.size + 1))
    dl = tmp_path / "dl"
    with pytest.raises(prep.ChecksumError) as e: prep.fetch_official("hmdb51", "splits", dl, progress=False, echo=None)
    assert f"size mismatch for {mirror.url}/{HMDB_SPLITS}" in str(e.value) and "--splits-source" in str(e.value)
    assert sorted(p.name for p in dl.iterdir()) == ["test_train_splits.rar.bad"]
    monkeypatch.setitem(prep.OFFICIAL["hmdb51"], "splits", f._replace(checksum="md5:" + "0" * 32))
    with pytest.raises(prep.ChecksumError, match="checksum mismatch"): prep.fetch_official("hmdb51", "splits", dl, progress=False, echo=None)
    assert sorted(p.name for p in dl.iterdir()) == ["test_train_splits.rar.bad"]
    monkeypatch.setitem(prep.OFFICIAL["hmdb51"], "splits", f)
    assert prep.fetch_official("hmdb51", "splits", dl, progress=False, echo=None).read_bytes() == mirror.files[HMDB_SPLITS]
    # a good file that went bad on disk since: found, checked, set aside and downloaded again
    (dl / "test_train_splits.rar.verified").unlink(); (dl / "test_train_splits.rar").write_bytes(b"x" * f.size)
    assert prep.fetch_official("hmdb51", "splits", dl, progress=False, echo=None).read_bytes() == mirror.files[HMDB_SPLITS]


def test_cli_prepare_official_resumes_and_refuses_a_wrong_checksum(tmp_path, mirror):
    "In a subprocess with the real checksums: the made archive is not the published one, so it must be refused."
    videos = mirror.files[HMDB_VIDEOS]
    env = dict(os.environ, PYTHONPATH=str(REPO), HAR_COLAB_OFFICIAL_MIRROR=mirror.url, HAR_COLAB_HOME=str(tmp_path / "home"),
               HAR_COLAB_FAIL_DOWNLOAD_AFTER_BYTES=str(len(videos) // 2))
    cmd = [sys.executable, "-m", "har_colab.cli", "prepare", "hmdb51", "--source", "official", "--out", "data"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "interrupted" in r.stderr, r.stderr
    assert "downloading hmdb51_org.rar (about 2 GB)" in r.stdout
    dl = tmp_path / "home" / "downloads"
    assert (dl / "hmdb51_org.rar.part").stat().st_size == len(videos) // 2
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "checksum mismatch" in r.stderr and "517d6f1f19f215c45cdd4d25356be1fb" in r.stderr and "hmdb51_org.rar.bad" in r.stderr
    assert ("/" + HMDB_VIDEOS, f"bytes={len(videos) // 2}-") in mirror.ranges
    assert sorted(p.name for p in dl.iterdir()) == ["hmdb51_org.rar.bad"]   # never kept as good
    assert (dl / "hmdb51_org.rar.bad").read_bytes() == videos and not (tmp_path / "data" / "hmdb51").exists()


@needs_unar
def test_prepare_ucf101_official(tmp_path, monkeypatch):
    classes = ["ApplyEyeMakeup", "YoYo"]
    vids = {c: [f"v_{c}_g{g:02d}_c01.avi" for g in (1, 2, 8, 9)] for c in classes}
    rar = rar4([("UCF-101", None)] + [(f"UCF-101/{c}/{v}", b"x") for c in classes for v in vids[c]])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\r\n2 YoYo\r\n")
        z.writestr("ucfTrainTestlist/trainlist01.txt", "".join(f"{c}/{v} {i + 1}\r\n" for i, c in enumerate(classes) for v in vids[c][2:]))
        z.writestr("ucfTrainTestlist/testlist01.txt", "".join(f"{c}/{v}\r\n" for c in classes for v in vids[c][:2]))
    o = prep.OFFICIAL["ucf101"]
    path = lambda f: f.url.split("://", 1)[1].split("/", 1)[1]
    s = Server({path(o["videos"]): rar, path(o["splits"]): buf.getvalue()})
    try:
        monkeypatch.setenv("HAR_COLAB_OFFICIAL_MIRROR", s.url)
        monkeypatch.setitem(prep.OFFICIAL["ucf101"], "splits", o["splits"]._replace(
            size=len(buf.getvalue()), checksum=hashlib.sha256(buf.getvalue()).hexdigest()))
        root = prepare_dataset("ucf101", "official", tmp_path / "data", downloads=tmp_path / "drive", progress=False, echo=None)
        assert root == tmp_path / "data" / "UCF-101" and sorted(p.name for p in (tmp_path / "drive").iterdir()) == [
            "UCF101.rar", "UCF101TrainTestSplits-RecognitionTask.zip", "UCF101TrainTestSplits-RecognitionTask.zip.verified"]
        assert load_samples("ucf101", root, fold="test").labels == [0, 0, 1, 1]
    finally:
        s.httpd.shutdown(); s.httpd.server_close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_official_server_whose_certificate_does_not_verify(tmp_path, monkeypatch, mirror):
    "A self-signed loopback HTTPS server: refused by a plain download, accepted for an official archive with a checksum."
    import ssl
    official_as_made(monkeypatch, mirror)
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    https = Server(dict(mirror.files))
    https.httpd.socket = ctx.wrap_socket(https.httpd.socket, server_side=True)
    url = https.url.replace("http://", "https://")
    try:
        with pytest.raises(prep.CertificateError, match="certificate does not verify"):
            download_url(f"{url}/{HMDB_SPLITS}", tmp_path / "plain" / "s.rar", progress=False)
        monkeypatch.setenv("HAR_COLAB_OFFICIAL_MIRROR", url)
        said = []
        got = prep.fetch_official("hmdb51", "splits", tmp_path / "dl", progress=False, echo=said.append)
        assert got.read_bytes() == mirror.files[HMDB_SPLITS]
        assert any("downloading it anyway, its checksum is checked after" in m for m in said)
    finally:
        https.httpd.shutdown(); https.httpd.server_close()
