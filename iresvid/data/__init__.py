"""Video data, the public API: frame-exact readers, real annotation formats, the preparation of a download
(`iresvid.data.prepare.prepare`, `Manifest`), clip samplers, datasets, loaders and the CPU/device transforms
a pipeline of one's own reuses.

``from iresvid.data import open_video`` etc.  Names are imported on first use, so a data-loader worker that
imports one module does not pay for the others.
"""

from importlib import import_module

_EXPORTS = {
    "iresvid.data.video_io": (
        "BACKENDS", "Backend", "DEFAULT_BACKEND", "FrameIndex", "KnownFile", "VideoDecodeError",
        "VideoReader", "clear_open_cache", "list_backends", "open_video",
    ),
    "iresvid.data.manifest": ("Manifest", "read_manifest"),
    # Not the function `prepare`: that name is the submodule's, which the import system sets on this package.
    "iresvid.data.prepare": (
        "JobOptions", "PrepareError", "PrepareReport", "merge_shards", "submit_shards", "wait_for_shards",
    ),
    "iresvid.data.annotations": (
        "Annotations", "VideoRecord", "folder_per_class", "kinetics_csv", "path_label_list",
        "read_class_index", "ucf101",
    ),
    "iresvid.data.sampling": ("random_clip", "segment_indices", "uniform_clips"),
    "iresvid.data.datasets": ("ClipDataset", "DatasetUnreadableError", "ImageDataset", "sample_generator"),
    "iresvid.data.loader": ("ShardedSampler", "build_loader", "collate_clips", "to_device"),
    "iresvid.data.transforms": (
        "CropFlipParams", "CropFlipSampler", "EvalViews", "GpuAugment", "MixupCutmix", "resize_short_side",
    ),
    "iresvid.data.encode": ("write_video",),
    "iresvid.data.synthetic": ("make_demo_data",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'iresvid.data' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
