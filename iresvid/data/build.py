"""From a `DataConfig` to annotations and datasets: the one place that knows the dataset formats' layouts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from iresvid.config import ConfigError, DataConfig
from iresvid.data import annotations as ann
from iresvid.data.datasets import ClipDataset, ImageDataset
from iresvid.data.manifest import Manifest
from iresvid.data.transforms import CropFlipSampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_annotations(cfg: DataConfig, split: str, *, classes: Sequence[str] | None = None) -> ann.Annotations:
    """The ``split`` ("train" or "val") of the dataset ``cfg`` describes.

    ``classes`` (the training set's, or a checkpoint's) fixes the class index of an evaluation split, and is
    checked against what the split itself lists: a different class order would silently permute labels.
    Without it, val takes the training split's class index wherever the format would otherwise derive one
    from the split's own content (sorted names or folders, the largest label): a val split lacking a class
    would shift every later class's index.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: dataset folder not found: {root}")
    train = split == "train"
    if not train and classes is None and _index_from_content(cfg):
        try:
            classes = load_annotations(cfg, "train").classes
        except FileNotFoundError as e:
            alternative = " or set data.classes_file" if cfg.format in ("kinetics", "list") else ""
            raise FileNotFoundError(
                f"the {split} split takes its class index from the training split, which cannot be read "
                f"(pass the classes, e.g. a checkpoint's{alternative}): {e}"
            ) from e
    video_dir = root / (cfg.train_dir if train else cfg.val_dir)
    classes_file = root / cfg.classes_file if cfg.classes_file else None

    if cfg.format == "ucf101":
        result = ann.ucf101(
            video_dir, root / cfg.annotation_dir, split=cfg.split, subset="train" if train else "test"
        )
    elif cfg.format in ("kinetics", "list"):
        listed = cfg.train_annotations if train else cfg.val_annotations
        key = "data.train_annotations" if train else "data.val_annotations"
        if not listed:
            raise ConfigError(f"'{key}' is not set: the {cfg.format} format needs an annotation file")
        listing = root / listed
        if not listing.is_file():
            raise FileNotFoundError(f"{key}: annotation file not found: {listing}")
        if listing.suffix.lower() == ".csv":
            result = ann.kinetics_csv(listing, video_dir, classes_file=classes_file, classes=classes)
        else:
            result = ann.path_label_list(
                listing, video_dir, classes_file=classes_file, classes=classes, num_classes=cfg.num_classes
            )
    elif cfg.format in ("folder", "imagefolder"):
        extensions = IMAGE_EXTENSIONS if cfg.format == "imagefolder" else ann.VIDEO_EXTENSIONS
        result = ann.folder_per_class(video_dir, extensions=extensions, classes=classes)
    else:
        raise ConfigError(f"'data.format': unknown format {cfg.format!r}")

    if classes is not None and list(result.classes) != list(classes):
        raise ValueError(
            f"the {split} split of {result.source} lists classes {_diff(result.classes, classes)} that "
            f"differ from the model's class index; evaluating would mislabel them"
        )
    if cfg.num_classes is not None and len(result.classes) != cfg.num_classes:
        raise ConfigError(
            f"'data.num_classes' is {cfg.num_classes} but {result.source} has {len(result.classes)} classes"
        )
    manifest = Manifest.find(root, cfg.manifest)
    return manifest.apply(result) if manifest is not None else result


def build_dataset(
    cfg: DataConfig,
    split: str,
    *,
    mode: str,
    classes: Sequence[str] | None = None,
    crop_sampler: CropFlipSampler | None = None,
    num_clips: int = 1,
    seed: int = 0,
) -> ClipDataset:
    """One split's dataset: training clips at ``decode_short_side``, evaluation clips at ``test_size``."""
    annotations = load_annotations(cfg, split, classes=classes)
    dataset_cls = ImageDataset if cfg.format == "imagefolder" else ClipDataset
    return dataset_cls(
        annotations,
        mode=mode,
        num_frames=cfg.num_frames,
        frame_stride=cfg.frame_stride,
        sampling=cfg.sampling,
        num_clips=num_clips,
        short_side=cfg.decode_short_side if mode == "train" else cfg.test_size,
        crop_sampler=crop_sampler,
        backend=cfg.backend,
        max_retries=cfg.max_decode_retries,
        seed=seed,
    )


def _index_from_content(cfg: DataConfig) -> bool:
    """Whether the format derives a split's class index from what that split lists."""
    if cfg.format in ("folder", "imagefolder"):
        return True
    if cfg.format in ("kinetics", "list"):  # CSVs: the sorted label names; path-label lists: 0..max label
        return cfg.classes_file is None
    return False  # ucf101: classInd.txt


def _diff(ours: Sequence[str], theirs: Sequence[str]) -> str:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return f"(first difference at index {i}: {a!r} vs {b!r}; {len(ours)} vs {len(theirs)} classes)"
    return f"({len(ours)} vs {len(theirs)} classes)"
