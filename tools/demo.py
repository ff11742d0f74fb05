"""`make demo`: the model zoo at a glance, and an inflated 3D iResNet run on a generated clip."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import iresvid
from iresvid.data.encode import write_video
from iresvid.zoo import complexity, format_table

SHOWN = ["resnet50", "iresnet50", "iresgroupfix50", "resnet3d50", "iresnet3d50", "iresgroupfix3d50"]


def moving_square_clip(num_frames: int = 16, size: int = 112) -> np.ndarray:
    """A textured square sliding left to right over noise: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 80, (num_frames, size, size, 3), dtype=np.uint8)
    patch = rng.integers(150, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    for t in range(num_frames):
        x = t * (size - size // 4) // (num_frames - 1)
        frames[t, size // 3 : size // 3 + size // 4, x : x + size // 4] = patch
    return frames


def main() -> None:
    print(
        f"iresvid {iresvid.__version__}: {len(iresvid.list_models())} registered models "
        f"({len(iresvid.list_models(dims=2))} 2D, {len(iresvid.list_models(dims=3))} 3D)\n"
    )
    print(format_table([complexity(name) for name in SHOWN]))

    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", moving_square_clip(), fps=25)
        import av

        with av.open(str(path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255  # (1, C, T, H, W)

    # A 2D iResNet-18, inflated into 3D: with "center" init a static clip gives the 2D logits exactly.
    parent = iresvid.create_model("iresnet18", num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "iresnet18.pth"
        torch.save(parent.state_dict(), ckpt)
        model = iresvid.create_model("iresnet3d18", num_classes=10, pretrained=str(ckpt)).eval()
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(clip)
        elapsed = time.perf_counter() - start
        static = clip[:, :, :1].expand_as(clip)
        gap = (model(static) - parent(clip[:, :, 0])).abs().max().item()
    print(
        f"\niresnet3d18 (inflated from iresnet18) on a {tuple(clip.shape)} encoded clip: logits "
        f"{tuple(logits.shape)} in {elapsed * 1000:.0f} ms; static clip vs 2D: max |Δlogit| = {gap:.1e}"
    )


if __name__ == "__main__":
    main()
