import math
from collections import Counter

import pytest
import torch

from iresvid.data.sampling import random_clip, segment_indices, uniform_clips


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_clips_spread_from_first_to_last_frame():
    # span 15, max_start 85: starts 0, 85 // 2 = 42, 85.
    assert uniform_clips(100, 8, 2, 3) == [
        [0, 2, 4, 6, 8, 10, 12, 14],
        [42, 44, 46, 48, 50, 52, 54, 56],
        [85, 87, 89, 91, 93, 95, 97, 99],
    ]


def test_uniform_clips_single_clip_is_centred():
    assert uniform_clips(100, 8, 2, 1) == [[42, 44, 46, 48, 50, 52, 54, 56]]
    assert uniform_clips(101, 8, 2, 1) == [[43, 45, 47, 49, 51, 53, 55, 57]]  # 43 before, 43 after


def test_uniform_clips_floor_after_product():
    # max_start 1 over 4 clips: 0, 1 // 3, 2 // 3, 3 // 3.
    assert [c[0] for c in uniform_clips(16, 8, 2, 4)] == [0, 0, 0, 1]
    # max_start 10 over 4 clips: 0, 3, 6, 10 (SlowFast's i * floor(10 / 3) would stop at 9).
    assert [c[0] for c in uniform_clips(25, 8, 2, 4)] == [0, 3, 6, 10]
    assert uniform_clips(25, 8, 2, 4)[-1][-1] == 24


def test_uniform_clips_exact_fit_and_padding():
    assert uniform_clips(15, 8, 2, 2) == [list(range(0, 15, 2))] * 2
    assert uniform_clips(10, 4, 4, 2) == [[0, 4, 8, 9], [0, 4, 8, 9]]
    assert uniform_clips(1, 3, 5, 3) == [[0, 0, 0]] * 3


def test_random_clip_padding_repeats_last_frame():
    assert random_clip(5, 4, 2, generator=gen(0)) == [0, 2, 4, 4]
    assert random_clip(1, 3, 5, generator=gen(0)) == [0, 0, 0]
    assert random_clip(7, 4, 2, generator=gen(0)) == [0, 2, 4, 6]  # exact fit: the only start
    assert random_clip(3, 1, 10, generator=gen(0)) in ([0], [1], [2])


def test_random_clip_start_uniform_over_all_valid_starts():
    g = gen(1)
    clips = [random_clip(20, 4, 3, generator=g) for _ in range(4000)]  # span 10 -> starts 0..10
    for clip in clips:
        assert clip == list(range(clip[0], clip[0] + 10, 3))
    counts = Counter(clip[0] for clip in clips)
    assert sorted(counts) == list(range(11))
    assert all(abs(n - 4000 / 11) < 5 * math.sqrt(4000 / 11) for n in counts.values())


def test_random_clip_deterministic_given_generator():
    a = [random_clip(300, 16, 4, generator=gen(7)) for _ in range(3)]
    b = [random_clip(300, 16, 4, generator=gen(7)) for _ in range(3)]
    assert a == b
    g1, g2 = gen(7), gen(7)
    assert [random_clip(300, 16, 4, generator=g1) for _ in range(5)] == [
        random_clip(300, 16, 4, generator=g2) for _ in range(5)
    ]


def test_segment_indices_test_mode_centres():
    # TSN: int(100 / 8 * (k + 0.5)).
    assert segment_indices(100, 8, train=False) == [6, 18, 31, 43, 56, 68, 81, 93]
    # 9 snippet starts over 3 segments: centres 1, 4, 7, each followed by its second frame.
    assert segment_indices(10, 3, frames_per_segment=2, train=False) == [1, 2, 4, 5, 7, 8]


def test_segment_indices_short_videos():
    # Fewer frames than segments: segments share frames, spread over the whole video.
    assert segment_indices(3, 5, train=False) == [0, 0, 1, 2, 2]
    assert set(segment_indices(3, 5, train=True, generator=gen(0))) <= {0, 1, 2}
    # Shorter than one snippet: every snippet is the whole video padded with its last frame.
    assert segment_indices(2, 2, frames_per_segment=3, train=False) == [0, 1, 1, 0, 1, 1]
    assert segment_indices(2, 2, frames_per_segment=3, train=True, generator=gen(0)) == [0, 1, 1, 0, 1, 1]


def test_segment_indices_train_offsets_cover_each_segment():
    g = gen(3)
    draws = [segment_indices(100, 8, train=True, generator=g) for _ in range(3000)]
    for k in range(8):
        seen = {d[k] for d in draws}
        # Segment k is the real interval [12.5 k, 12.5 (k + 1)): frames overlapping it, and only those.
        assert seen == set(range(math.floor(12.5 * k), math.ceil(12.5 * (k + 1))))
    assert all(d == sorted(d) for d in draws)


def test_segment_indices_train_snippets_and_determinism():
    a = segment_indices(50, 4, frames_per_segment=3, train=True, generator=gen(5))
    assert a == segment_indices(50, 4, frames_per_segment=3, train=True, generator=gen(5))
    assert len(a) == 12
    for k in range(4):
        start = a[3 * k]
        assert a[3 * k : 3 * k + 3] == [start, start + 1, start + 2]
        assert 12 * k <= start < 12 * (k + 1)  # 48 starts -> segments of 12
    assert max(a) <= 49


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: random_clip(0, 8, 2), "num_video_frames"),
        (lambda: random_clip(-3, 8, 2), "num_video_frames"),
        (lambda: random_clip(10, 0, 2), "num_frames"),
        (lambda: random_clip(10, 8, 0), "frame_stride"),
        (lambda: uniform_clips(0, 8, 2, 3), "num_video_frames"),
        (lambda: uniform_clips(10, 8, 2, 0), "num_clips"),
        (lambda: uniform_clips(10, 8, -1, 1), "frame_stride"),
        (lambda: segment_indices(0, 8, train=True), "num_video_frames"),
        (lambda: segment_indices(10, 0, train=False), "num_segments"),
        (lambda: segment_indices(10, 2, frames_per_segment=0, train=False), "frames_per_segment"),
    ],
)
def test_invalid_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_indices_never_past_the_end():
    for n in range(1, 40):
        for clip in uniform_clips(n, 8, 3, 5):
            assert max(clip) == min(clip[0] + 21, n - 1) and min(clip) >= 0
        assert max(random_clip(n, 8, 3, generator=gen(n))) <= n - 1
        assert max(segment_indices(n, 7, frames_per_segment=2, train=True, generator=gen(n))) <= n - 1
        assert max(segment_indices(n, 7, frames_per_segment=2, train=False)) <= n - 1
