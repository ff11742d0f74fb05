import pytest
import torch
import torch.nn.functional as F

from iresvid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropFlipParams,
    CropFlipSampler,
    EvalViews,
    GpuAugment,
    MixParams,
    MixupCutmix,
    resize_short_side,
)

# std 1/255 with mean 0 makes normalisation the identity on 0-255 values, so outputs show raw pixels.
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen(seed))


def test_resize_short_side_kept():
    frames = noise(2, 30, 40, 3)
    assert resize_short_side(frames, 15).shape == (2, 15, 20, 3)
    assert resize_short_side(frames.transpose(1, 2), 15).shape == (2, 20, 15, 3)
    assert resize_short_side(frames, 30) is frames


AUGMENTS = {
    "jitter": GpuAugment(CropFlipSampler(24, mode="short_side_jitter", jitter_sizes=(24, 44))),
    "rrc": GpuAugment(CropFlipSampler(24, mode="random_resized_crop"), mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


@pytest.mark.parametrize("name", AUGMENTS)
@pytest.mark.parametrize("shape", [(6, 3, 4, 40, 56), (6, 3, 40, 56)], ids=["video", "image"])
def test_batched_output_matches_reference(name, shape):
    aug = AUGMENTS[name]
    x = noise(*shape)
    params = aug.sampler.sample_params(len(x), 40, 56, gen(1))
    assert params.flip.any() and not params.flip.all()  # both branches exercised
    out = aug.apply(x, params)
    assert out.dtype == torch.float32 and out.shape == (*shape[:-2], 24, 24)
    ref = torch.stack([aug.apply_reference(x[i], params[i]) for i in range(len(x))])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_box_and_flip_conventions_exact():
    # Full-frame box at the frame's own size: resampling is the identity, so only the flip remains.
    x = noise(2, 3, 2, 8, 10)
    aug = GpuAugment(CropFlipSampler(8, mode="random_resized_crop"), **RAW)
    params = CropFlipParams(torch.tensor([[0, 1, 8, 8], [0, 0, 8, 8]]), torch.tensor([False, True]))
    out = aug.apply(x, params)
    torch.testing.assert_close(out[0], x[0, ..., 1:9].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1, ..., :8].flip(-1).float(), atol=1e-4, rtol=0)
    # A 4-pixel box to 2 outputs reads source columns 0.5 and 2.5 (align_corners=False), linearly.
    aug2 = GpuAugment(CropFlipSampler(2, mode="random_resized_crop"), **RAW)
    ramp = (torch.arange(10) * 10).to(torch.uint8).expand(1, 3, 8, 10)
    out = aug2.apply(ramp, CropFlipParams(torch.tensor([[2, 0, 4, 4]]), torch.tensor([False])))
    torch.testing.assert_close(out[0, 0], torch.tensor([[5.0, 25.0], [5.0, 25.0]]), atol=1e-4, rtol=0)


def test_crop_and_flip_shared_across_frames_but_not_samples():
    # Frame t = frame 0 + 10 t, and bilinear weights sum to 1, so with one box and flip per clip every
    # output frame is output frame 0 + 10 t / (255 std).
    base = torch.randint(0, 200, (8, 3, 1, 32, 48), dtype=torch.uint8, generator=gen(2))
    x = base + 10 * torch.arange(5, dtype=torch.uint8).view(1, 1, 5, 1, 1)
    aug = GpuAugment(CropFlipSampler(16, jitter_sizes=(16, 24)))
    out = aug(x, generator=gen(3))
    step = 10 / (255 * 0.225)
    for t in range(5):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0] + t * step, atol=1e-4, rtol=0)
    # The same clip in every sample still gets different crops/flips.
    same = aug(x[:1].expand(8, -1, -1, -1, -1), generator=gen(3))
    assert all(not torch.allclose(same[0], same[i]) for i in range(1, 8))


def test_short_side_jitter_params_ranges():
    p = CropFlipSampler(112, jitter_sizes=(128, 160)).sample_params(4000, 128, 171, gen(4))
    top, left, h, w = p.boxes.T
    assert torch.equal(h, w)  # a uniform scale keeps the aspect ratio
    # side = round(112 * 128 / s), s in [128, 160]
    assert h.min() == round(112 * 128 / 160) and h.max() == 112
    assert (top >= 0).all() and (top + h <= 128).all() and (left >= 0).all() and (left + w <= 171).all()
    # Offsets reach both edges.
    assert top.min() == 0 and (top + h).max() == 128 and left.min() == 0 and (left + w).max() == 171
    assert abs(p.flip.double().mean().item() - 0.5) < 0.03


def test_random_resized_crop_params_ranges():
    sampler = CropFlipSampler(
        224, mode="random_resized_crop", area_scale=(0.25, 0.5), aspect_ratio=(0.5, 2.0)
    )
    p = sampler.sample_params(4000, 600, 800, gen(5))
    top, left, h, w = p.boxes.T.double()
    area = h * w / (600 * 800)
    # Rounding each side to whole pixels moves area and ratio by well under 1 %.
    assert area.min() > 0.25 * 0.99 and area.max() < 0.5 * 1.01
    assert (w / h).min() > 0.5 * 0.99 and (w / h).max() < 2.0 * 1.01
    assert (w / h).min() < 0.55 and (w / h).max() > 1.8 and area.min() < 0.26 and area.max() > 0.49
    assert (top >= 0).all() and (top + h <= 600).all() and (left >= 0).all() and (left + w <= 800).all()


# Drawn by GpuAugment.sample_params before the sampler was split from it (commit 6a1e177): the same seeds
# must give every run, old or resumed, the same crops.
RECORDED_DRAWS = [
    (
        CropFlipSampler(24, jitter_sizes=(24, 44)), (4, 40, 56, 1),
        [[0, 4, 38, 38], [1, 13, 27, 27], [6, 15, 27, 27], [6, 2, 25, 25]], [True, False, True, True],
    ),
    (
        CropFlipSampler(24, jitter_sizes=(24, 44)),
        (3, torch.tensor([40, 30, 64]), torch.tensor([56, 64, 30]), 2),  # per-sample frame sizes
        [[1, 24, 23, 23], [7, 5, 17, 17], [21, 0, 19, 19]], [False, True, False],
    ),
    (
        CropFlipSampler(24, mode="random_resized_crop", flip_prob=0.3), (4, 40, 56, 3),
        [[15, 23, 17, 14], [6, 11, 30, 24], [0, 21, 39, 35], [7, 17, 30, 22]], [True, False, False, False],
    ),
]  # fmt: skip


@pytest.mark.parametrize("sampler, args, boxes, flips", RECORDED_DRAWS)
def test_the_sampler_draws_what_the_augment_drew_before_the_split(sampler, args, boxes, flips):
    n, height, width, seed = args
    params = sampler.sample_params(n, height, width, gen(seed))
    assert params.boxes.tolist() == boxes and params.flip.tolist() == flips


def test_random_resized_crop_fallback_is_torchvision_centre_crop():
    # No box of ratio >= 3 covers 90 % of a 10x10 frame: torchvision's fallback clamps the ratio into range.
    sampler = CropFlipSampler(4, mode="random_resized_crop", area_scale=(0.9, 1.0), aspect_ratio=(3.0, 4.0))
    p = sampler.sample_params(3, 10, 10, gen(0))
    assert p.boxes.tolist() == [[3, 0, 3, 10]] * 3  # height round(10 / 3), centred


def test_augment_deterministic_given_generator_and_channels_last():
    x = noise(4, 3, 4, 32, 40)
    sampler = CropFlipSampler(16, jitter_sizes=(16, 32))
    aug = GpuAugment(sampler)
    a, b = aug(x, generator=gen(9)), aug(x, generator=gen(9))
    assert torch.equal(a, b)
    cl = GpuAugment(sampler, channels_last=True)(x, generator=gen(9))
    assert cl.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(cl, a)


def test_augment_rejects_bad_input():
    aug = GpuAugment(CropFlipSampler(16, jitter_sizes=(16, 32)))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        aug(noise(2, 1, 4, 32, 32))
    with pytest.raises(ValueError, match="jitter_sizes"):
        CropFlipSampler(224, jitter_sizes=(128, 160))


def coordinate_video(n: int, t: int, h: int, w: int) -> torch.Tensor:
    """uint8 (n, 3, t, h, w) whose channels hold each pixel's row, column and 10 * sample + frame."""
    rows = torch.arange(h).view(1, 1, h, 1).expand(n, t, h, w)
    cols = torch.arange(w).view(1, 1, 1, w).expand(n, t, h, w)
    ids = (10 * torch.arange(n).view(n, 1, 1, 1) + torch.arange(t).view(1, t, 1, 1)).expand(n, t, h, w)
    return torch.stack([rows, cols, ids], dim=1).to(torch.uint8)


@pytest.mark.parametrize(
    ("h", "w", "num_crops", "expected"),
    [
        (8, 14, 3, [(0, 0), (0, 3), (0, 6)]),  # left, centre, right
        (14, 8, 3, [(0, 0), (3, 0), (6, 0)]),  # portrait: top, centre, bottom
        (8, 13, 1, [(0, 3)]),  # centre offset ceil(5 / 2)
        (8, 8, 3, [(0, 0)] * 3),
    ],
)
def test_eval_views_exact_crop_positions(h, w, num_crops, expected):
    x = coordinate_video(2, 3, h, w)
    views = EvalViews(8, num_crops, **RAW)
    assert views.crop_offsets(h, w) == expected
    out = views(x)
    assert out.shape == (2 * num_crops, 3, 3, 8, 8)
    for n in range(2):
        for k, (top, left) in enumerate(expected):
            view = out[n * num_crops + k]  # sample-major order
            assert torch.equal(view[0], torch.arange(top, top + 8).view(1, 8, 1).expand(3, 8, 8).float())
            assert torch.equal(view[1], torch.arange(left, left + 8).view(1, 1, 8).expand(3, 8, 8).float())
            assert torch.equal(view[2], (10 * n + torch.arange(3)).view(3, 1, 1).expand(3, 8, 8).float())


def test_eval_views_resizes_like_the_worker_and_normalises():
    x = noise(2, 3, 2, 16, 28)
    out = EvalViews(8, 3, channels_last=True)(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    resized = F.interpolate(
        x.flatten(1, 2).float(), size=(8, 14), mode="bilinear", antialias=True, align_corners=False
    ).view(2, 3, 2, 8, 14)
    expected = torch.stack([resized[..., o : o + 8] for o in (0, 3, 6)], dim=1).flatten(0, 1)
    torch.testing.assert_close(out, (expected / 255 - 0.45) / 0.225, atol=1e-5, rtol=0)
    # The worker's uint8 resize differs only by its rounding to whole grey levels.
    worker = torch.stack([resize_short_side(clip.permute(1, 2, 3, 0), 8) for clip in x]).permute(
        0, 4, 1, 2, 3
    )
    assert (worker.float() - resized).abs().max() <= 1


def test_eval_views_images_and_invalid_crops():
    assert EvalViews(8, 3)(noise(2, 3, 8, 12)).shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match="num_crops"):
        EvalViews(8, 5)


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    return F.one_hot(target, num_classes) * (1 - smoothing) + smoothing / num_classes


def test_cutmix_box_shared_across_frames_and_targets():
    mix = MixupCutmix(10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
    x = torch.randn(4, 3, 5, 20, 30, generator=gen(0))
    target = torch.tensor([1, 2, 3, 4])
    params = mix.sample_params(20, 30, gen(1))
    top, bottom, left, right = params.box
    assert 0 <= top < bottom <= 20 and 0 <= left < right <= 30
    assert params.lam == pytest.approx(1 - (bottom - top) * (right - left) / 600)
    mixed, soft = mix.apply(x, target, params)
    inside = torch.zeros(20, 30, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(mixed[..., inside], x.flip(0)[..., inside])  # every frame, the same box
    assert torch.equal(mixed[..., ~inside], x[..., ~inside])
    expected = params.lam * smooth_one_hot(target, 10, 0.1) + (1 - params.lam) * smooth_one_hot(
        target.flip(0), 10, 0.1
    )
    torch.testing.assert_close(soft, expected)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))


def test_mixup_pixels_and_targets():
    mix = MixupCutmix(5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    x = torch.randn(3, 3, 2, 4, 4, generator=gen(0))
    target = torch.tensor([0, 1, 4])
    mixed, soft = mix(x, target, generator=gen(2))
    lam = mix.sample_params(4, 4, gen(2)).lam
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    assert soft[0, 0] == pytest.approx(lam) and soft[0, 4] == pytest.approx(1 - lam)
    torch.testing.assert_close(soft.sum(1), torch.ones(3))


def test_mix_probabilities_and_no_mix():
    mix = MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.3, prob=0.6)
    g = gen(3)
    draws = [mix.sample_params(16, 16, g) for _ in range(4000)]
    mixed = [d for d in draws if d.lam < 1]
    assert abs(len(mixed) / 4000 - 0.6) < 0.03
    assert abs(sum(d.box is not None for d in mixed) / len(mixed) - 0.3) < 0.03
    # No mix: the batch is returned as is with plainly smoothed targets.
    x = torch.randn(2, 3, 2, 4, 4)
    out, soft = mix.apply(x, torch.tensor([3, 7]), MixParams(1.0, None))
    assert out is x
    torch.testing.assert_close(soft, smooth_one_hot(torch.tensor([3, 7]), 10, 0.1))
    assert soft[0, 3] == pytest.approx(0.91) and soft[0, 0] == pytest.approx(0.01)


def test_mix_deterministic_given_generator():
    mix = MixupCutmix(10)
    assert [mix.sample_params(32, 32, gen(s)) for s in range(20)] == [
        mix.sample_params(32, 32, gen(s)) for s in range(20)
    ]
    assert len({mix.sample_params(32, 32, gen(s)) for s in range(20)}) == 20
