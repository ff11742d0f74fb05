"""Datasets of decoded clips (or images), tolerant of bad files, reproducible to the sample.

Workers decode, sample frames and resize the short side in uint8, and draw each sample's crop box and flip
(`CropFlipSampler`); the crops, flips and normalisation themselves happen batched on the training device
(`GpuAugment`).  Every random choice for a sample — the clip's start, its
crop box, its flip — is drawn here from a generator seeded by ``(seed, epoch, index)``, so a sample is the
same whichever worker, process or resumed run produces it: resumed and multi-process runs see exactly the
data an uninterrupted single-process run sees.

A video that cannot be read (missing, zero bytes, truncated, undecodable, unreadable) never stops an epoch:
it is logged with its path and reason, carried in the sample's ``failures`` (the trainer counts them and
writes them to a file at the epoch's end) and replaced by another video drawn from the dataset — with that
video's own label: the batch carries the label and index of what was actually decoded.  After
``max_retries`` replacements the error says the dataset looks unreadable, listing the reasons.  At
evaluation nothing is replaced (it would count a video twice); the sample is marked ``valid=False``.

An evaluation item is a whole video: all of its ``num_clips`` clips come from one `open_video` and one
``get_frames`` call (the reader serves the union of their frames in ascending order), where reading each
clip on its own would open and seek the file ``num_clips`` times.  `collate_clips` turns the item back into
one batch row per clip, so evaluation code sees clips as before.

Every sample carries ``rereads``: the frame reads its reader had to redo through its exact path because a
returned frame's timestamp did not match (``VideoReader.rereads``); batches and epochs sum them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.sampling import random_clip, segment_indices, uniform_clips
from iresvid.data.transforms import CropFlipSampler, resize_short_side
from iresvid.data.video_io import DEFAULT_BACKEND, open_video
from iresvid.errors import UserError

log = logging.getLogger(__name__)


class DatasetUnreadableError(UserError, RuntimeError):
    """Every attempt to load a sample failed: the dataset (or its decoder) is broken, not one file."""


def sample_generator(seed: int, epoch: int, index: int, attempt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index, attempt), never on worker or process."""
    entropy = np.random.SeedSequence([seed, epoch, index, attempt]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


class ClipDataset(Dataset):
    """Clips of the videos in ``annotations``.

    ``mode="train"``: item ``i`` is one random clip of video ``i`` (or TSN segments with
    ``sampling="segments"``), plus its crop box and flip from ``crop_sampler.sample_params``.
    ``mode="eval"``: item ``i`` is video ``i`` with all of its ``num_clips`` uniformly spaced clips, read in
    one pass; `collate_clips` makes each clip a batch row, so a batch of B items is B × num_clips clips (the
    evaluation loader sizes B for that); the evaluator averages a video's clips.

    Items are dicts: ``input`` uint8 (C, T, H, W) with the short side ``short_side``, ``label``, ``index``
    (the video actually decoded), ``size`` (H, W), ``failures`` [(path, reason)], ``valid``, ``rereads``;
    in training ``crop_box`` (top, left, h, w) and ``flip``.  In evaluation ``input`` is (num_clips, C, T,
    H, W), ``video_index`` is the video, ``clip_valid`` says which clips were read (a clip that was not is
    zeros) and ``valid`` whether any was; ``failures`` has one entry per clip that could not be read.

    Indexing with ``(index, epoch)`` pairs (as `ShardedSampler` yields) makes the draw epoch-dependent.
    """

    def __init__(
        self,
        annotations: Annotations,
        *,
        mode: str = "train",
        num_frames: int = 8,
        frame_stride: int = 8,
        sampling: str = "clip",
        num_clips: int = 1,
        short_side: int = 320,
        crop_sampler: CropFlipSampler | None = None,
        backend: str = DEFAULT_BACKEND,
        max_retries: int = 10,
        seed: int = 0,
    ):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if sampling not in ("clip", "segments"):
            raise ValueError(f"sampling must be 'clip' or 'segments', got {sampling!r}")
        if not annotations.records:
            raise FileNotFoundError(f"no videos to read: {annotations.summary()}")
        self.records: list[VideoRecord] = annotations.records
        self.manifest = annotations.manifest  # what a prepared set knows of each file: no first-open checks
        self.classes = annotations.classes
        self.source = annotations.source
        self.mode = mode
        self.num_frames, self.frame_stride, self.sampling = num_frames, frame_stride, sampling
        self.num_clips = num_clips if mode == "eval" else 1
        self.short_side = short_side
        self.crop_sampler = crop_sampler
        self.backend = backend
        self.max_retries = max_retries
        self.seed = seed
        log.info("%s dataset: %s", mode, annotations.summary())

    @property
    def num_videos(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.mode == "eval":
            return self._eval_item(index)
        failures: list[tuple[str, str]] = []
        candidate = index
        for attempt in range(self.max_retries + 1):
            generator = sample_generator(self.seed, epoch, index, attempt)
            if attempt:  # a replacement drawn from the whole dataset, reproducibly
                candidate = int(torch.randint(len(self.records), (1,), generator=generator))
            record = self.records[candidate]
            try:
                frames, rereads = self._read(record, generator)
            except Exception as e:  # noqa: BLE001 — any unreadable file is skipped, logged and reported
                failures.append((str(record.path), _reason(e)))
                log.warning("skipping unreadable video %s: %s", record.path, _reason(e))
                continue
            sample = self._sample(frames, record, candidate, failures, rereads)
            if self.crop_sampler is not None:
                params = self.crop_sampler.sample_params(1, frames.shape[-2], frames.shape[-1], generator)
                sample["crop_box"], sample["flip"] = params.boxes[0], params.flip[0]
            return sample
        listing = "; ".join(f"{path}: {reason}" for path, reason in failures)
        raise DatasetUnreadableError(
            f"{self.max_retries + 1} videos in a row failed to load for sample {index} of {self.source} "
            f"(is the dataset or the '{self.backend}' decoder broken?): {listing}"
        )

    def _eval_item(self, video_index: int) -> dict:
        record = self.records[video_index]
        every = list(range(self.num_clips))
        failures: list[tuple[str, str]] = []
        try:
            clips, rereads = self._read_clips(record, every)
        except Exception as e:  # noqa: BLE001 — an unreadable file is left out and reported, never replaced
            if self.num_clips == 1:
                clips, rereads = [None], 0
                failures.append((str(record.path), _reason(e)))
            else:
                # The one pass fails as a whole, but a damaged file (e.g. truncated after its first clips)
                # may still give some clips: read each on its own, as evaluation always could, and keep those.
                clips, rereads = [], 0
                for clip_index in every:
                    try:
                        [clip], count = self._read_clips(record, [clip_index])
                    except Exception as e:  # noqa: BLE001
                        clip, count = None, 0
                        failures.append((str(record.path), _reason(e)))
                    clips.append(clip)
                    rereads += count
        read = [clip for clip in clips if clip is not None]
        if failures:
            log.warning(
                "cannot evaluate %d of %d clips of %s: %s",
                len(failures),
                len(clips),
                record.path,
                failures[0][1],
            )
        blank = torch.zeros_like(read[0]) if read else self._blank()
        frames = torch.stack([blank if clip is None else clip for clip in clips])
        sample = self._sample(frames, record, video_index, failures, rereads)
        sample["valid"] = bool(read)
        sample["video_index"], sample["clip_valid"] = video_index, [clip is not None for clip in clips]
        return sample

    def _read(self, record: VideoRecord, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One training clip, uint8 (C, T, H, W) with the short side resized, and its reader's rereads."""

        def pick(n: int) -> list[list[int]]:
            if self.sampling == "segments":
                return [segment_indices(n, self.num_frames, train=True, generator=generator)]
            return [random_clip(n, self.num_frames, self.frame_stride, generator=generator)]

        [clip], rereads = self._decode(record, pick)
        return clip, rereads

    def _read_clips(self, record: VideoRecord, clip_indices: Sequence[int]) -> tuple[list[torch.Tensor], int]:
        """Evaluation clips ``clip_indices`` of ``record`` (of its ``num_clips`` uniform ones): one pass."""

        def pick(n: int) -> list[list[int]]:
            uniform = uniform_clips(n, self.num_frames, self.frame_stride, self.num_clips)
            return [uniform[c] for c in clip_indices]

        return self._decode(record, pick)

    def _decode(
        self, record: VideoRecord, pick: Callable[[int], list[list[int]]]
    ) -> tuple[list[torch.Tensor], int]:
        """Open ``record`` once and read the clips ``pick(num_frames)`` lists with one ``get_frames`` call.

        Returns each clip as uint8 (C, T, H, W) with the short side resized (the resize works frame by frame,
        so resizing them together gives each clip's own result) and the reader's ``rereads``.
        """
        known = self.manifest.known_file(record.path) if self.manifest is not None else None
        with open_video(record.path, self.backend, known=known) as reader:
            clips = pick(reader.num_frames)
            frames = reader.get_frames([i for clip in clips for i in clip])
            rereads = reader.rereads
        frames = resize_short_side(frames, self.short_side).permute(3, 0, 1, 2)
        return list(frames.split([len(clip) for clip in clips], dim=1)), rereads

    def _blank(self) -> torch.Tensor:
        """What stands in for a clip of a video none of whose clips could be read (never looked at)."""
        return torch.zeros(3, self.num_frames, 1, 1, dtype=torch.uint8)

    @staticmethod
    def _sample(frames: torch.Tensor, record: VideoRecord, index: int, failures: list, rereads: int) -> dict:
        return {
            "input": frames,
            "label": record.label,
            "index": index,
            "size": torch.tensor(frames.shape[-2:]),
            "failures": failures,
            "valid": True,
            "rereads": rereads,
        }


class ImageDataset(ClipDataset):
    """Images of an image-folder dataset (2D models), with the same fault handling and determinism.

    ``input`` is uint8 (C, H, W); decoding is torchvision's (libjpeg / libpng), in the worker.
    """

    def _read(self, record: VideoRecord, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return self._image(record), 0

    def _read_clips(self, record: VideoRecord, clip_indices: Sequence[int]) -> tuple[list[torch.Tensor], int]:
        return [self._image(record)] * len(clip_indices), 0  # an image's every "clip" is the image

    def _image(self, record: VideoRecord) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image

        path = Path(record.path)
        if not path.is_file():
            raise FileNotFoundError(f"no such image: {path}")
        image = decode_image(str(path), mode=ImageReadMode.RGB)  # (C, H, W) uint8
        return resize_short_side(image.permute(1, 2, 0)[None], self.short_side)[0].permute(2, 0, 1)

    def _blank(self) -> torch.Tensor:
        return torch.zeros(3, 1, 1, dtype=torch.uint8)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()
