"""Datasets of decoded clips (or images), tolerant of bad files, reproducible to the sample.

Workers decode, sample frames and resize the short side in uint8; crops, flips and normalisation happen
batched on the training device (`GpuAugment`).  Every random choice for a sample — the clip's start, its
crop box, its flip — is drawn here from a generator seeded by ``(seed, epoch, index)``, so a sample is the
same whichever worker, process or resumed run produces it: resumed and multi-process runs see exactly the
data an uninterrupted single-process run sees.

A video that cannot be read (missing, zero bytes, truncated, undecodable, unreadable) never stops an epoch:
it is logged with its path and reason, carried in the sample's ``failures`` (the trainer counts them and
writes them to a file at the epoch's end) and replaced by another video drawn from the dataset — with that
video's own label: the batch carries the label and index of what was actually decoded.  After
``max_retries`` replacements the error says the dataset looks unreadable, listing the reasons.  At
evaluation nothing is replaced (it would count a video twice); the sample is marked ``valid=False``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from iresvid.data.annotations import Annotations, VideoRecord
from iresvid.data.sampling import random_clip, segment_indices, uniform_clips
from iresvid.data.transforms import GpuAugment, resize_short_side
from iresvid.data.video_io import open_video

log = logging.getLogger(__name__)


class DatasetUnreadableError(RuntimeError):
    """Every attempt to load a sample failed: the dataset (or its decoder) is broken, not one file."""


def sample_generator(seed: int, epoch: int, index: int, attempt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index, attempt), never on worker or process."""
    entropy = np.random.SeedSequence([seed, epoch, index, attempt]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


class ClipDataset(Dataset):
    """Clips of the videos in ``annotations``.

    ``mode="train"``: item ``i`` is one random clip of video ``i`` (or TSN segments with
    ``sampling="segments"``), plus its crop box and flip from ``augment.sample_params``.
    ``mode="eval"``: item ``i`` is clip ``i % num_clips`` of video ``i // num_clips`` (uniformly spaced
    clips), so evaluation batches stay small and bounded; the evaluator averages a video's clips.

    Items are dicts: ``input`` uint8 (C, T, H, W) with the short side ``short_side``, ``label``, ``index``
    (the video actually decoded), ``size`` (H, W), ``failures`` [(path, reason)], ``valid``; in training
    ``crop_box`` (top, left, h, w) and ``flip``; in evaluation ``video_index`` and ``clip_index``.

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
        augment: GpuAugment | None = None,
        backend: str = "decord",
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
        self.classes = annotations.classes
        self.source = annotations.source
        self.mode = mode
        self.num_frames, self.frame_stride, self.sampling = num_frames, frame_stride, sampling
        self.num_clips = num_clips if mode == "eval" else 1
        self.short_side = short_side
        self.augment = augment
        self.backend = backend
        self.max_retries = max_retries
        self.seed = seed
        log.info("%s dataset: %s", mode, annotations.summary())

    @property
    def num_videos(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records) * self.num_clips

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
                frames = self._read(record, generator)
            except Exception as e:  # noqa: BLE001 — any unreadable file is skipped, logged and reported
                failures.append((str(record.path), _reason(e)))
                log.warning("skipping unreadable video %s: %s", record.path, _reason(e))
                continue
            sample = self._sample(frames, record, candidate, failures)
            if self.augment is not None:
                params = self.augment.sample_params(1, frames.shape[-2], frames.shape[-1], generator)
                sample["crop_box"], sample["flip"] = params.boxes[0], params.flip[0]
            return sample
        listing = "; ".join(f"{path}: {reason}" for path, reason in failures)
        raise DatasetUnreadableError(
            f"{self.max_retries + 1} videos in a row failed to load for sample {index} of {self.source} "
            f"(is the dataset or the '{self.backend}' decoder broken?): {listing}"
        )

    def _eval_item(self, index: int) -> dict:
        video_index, clip_index = divmod(index, self.num_clips)
        record = self.records[video_index]
        try:
            frames = self._read(record, None, clip_index)
            sample = self._sample(frames, record, video_index, [])
        except Exception as e:  # noqa: BLE001
            log.warning("cannot evaluate video %s: %s", record.path, _reason(e))
            placeholder = torch.zeros(3, self.num_frames, 1, 1, dtype=torch.uint8)
            sample = self._sample(placeholder, record, video_index, [(str(record.path), _reason(e))])
            sample["valid"] = False
        sample["video_index"], sample["clip_index"] = video_index, clip_index
        return sample

    def _read(
        self, record: VideoRecord, generator: torch.Generator | None, clip_index: int = 0
    ) -> torch.Tensor:
        """Decode the frames of one clip: uint8 (C, T, H, W) with the short side resized."""
        with open_video(record.path, self.backend) as reader:
            n = reader.num_frames
            if self.mode == "eval":
                indices = uniform_clips(n, self.num_frames, self.frame_stride, self.num_clips)[clip_index]
            elif self.sampling == "segments":
                indices = segment_indices(n, self.num_frames, train=True, generator=generator)
            else:
                indices = random_clip(n, self.num_frames, self.frame_stride, generator=generator)
            frames = reader.get_frames(indices)
        return resize_short_side(frames, self.short_side).permute(3, 0, 1, 2)

    @staticmethod
    def _sample(frames: torch.Tensor, record: VideoRecord, index: int, failures: list) -> dict:
        return {
            "input": frames,
            "label": record.label,
            "index": index,
            "size": torch.tensor(frames.shape[-2:]),
            "failures": failures,
            "valid": True,
        }


class ImageDataset(ClipDataset):
    """Images of an image-folder dataset (2D models), with the same fault handling and determinism.

    ``input`` is uint8 (C, H, W); decoding is torchvision's (libjpeg / libpng), in the worker.
    """

    def _read(
        self, record: VideoRecord, generator: torch.Generator | None, clip_index: int = 0
    ) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image

        path = Path(record.path)
        if not path.is_file():
            raise FileNotFoundError(f"no such image: {path}")
        image = decode_image(str(path), mode=ImageReadMode.RGB)  # (C, H, W) uint8
        return resize_short_side(image.permute(1, 2, 0)[None], self.short_side)[0].permute(2, 0, 1)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()
