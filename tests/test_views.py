"""Training views: rotations4 (MLKD) and weak_strong (MLLD), with the batch-level RandAugment and Cutout they use."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from kdbench.data import VIEWS, make_views, view_copies
from kdbench.data.augment import apply_augmentation
from kdbench.data.randaugment import (
    RANDAUGMENT_OPS,
    SIGNED_OPS,
    apply_drawn_ops,
    apply_op,
    cutout,
    draw_ops,
    op_magnitude,
    rand_augment,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pattern(count: int = 4, channels: int = 3, size: int = 8) -> torch.Tensor:
    """Images whose every pixel is distinct within an image (no symmetry), values 1..255 (never 0)."""
    values = torch.arange(count * channels * size * size).reshape(count, channels, size, size)
    return (values % 255 + 1).to(torch.uint8)


def _random_images(count: int = 4, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 256, (count, channels, size, size), generator=_gen(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------------ registry, shapes


def test_registry_keeps_single_and_adds_the_two_views() -> None:
    assert view_copies("single") == 1
    assert view_copies("rotations4") == 4
    assert view_copies("weak_strong") == 2
    assert {"single", "rotations4", "weak_strong"} <= set(VIEWS)
    with pytest.raises(ValueError, match="allowed"):
        make_views("nope", _pattern(), "crop_flip", _gen(), 4)


@pytest.mark.parametrize("view", ["single", "rotations4", "weak_strong"])
@pytest.mark.parametrize("augmentation", ["crop_flip", "jitter", "none"])
def test_shapes_dtype_and_determinism(view: str, augmentation: str) -> None:
    batch = _random_images(5, 3, 16)
    out = make_views(view, batch, augmentation, _gen(3), 4)
    assert out.shape == (view_copies(view) * 5, 3, 16, 16)
    assert out.dtype == torch.uint8 and out.device == batch.device
    assert torch.equal(out, make_views(view, batch, augmentation, _gen(3), 4))  # same seed, same output
    if augmentation != "none" or view == "weak_strong":
        assert not torch.equal(out, make_views(view, batch, augmentation, _gen(4), 4))


def test_grayscale_images_work() -> None:
    batch = _random_images(6, 1, 28)
    assert make_views("weak_strong", batch, "jitter", _gen(), 4).shape == (12, 1, 28, 28)
    assert make_views("rotations4", batch, "jitter", _gen(), 4).shape == (24, 1, 28, 28)


# ------------------------------------------------------------------------------------------------ rotations4


def test_rotations_are_90_degree_rotations_of_the_flipped_plain_copy() -> None:
    batch = _pattern(6)
    out = make_views("rotations4", batch, "crop_flip", _gen(5), 0)  # pad 0: the crop keeps the whole image
    plain = out[:6]
    flipped = torch.tensor([torch.equal(p, b.flip(-1)) for p, b in zip(plain, batch, strict=True)])
    kept = torch.tensor([torch.equal(p, b) for p, b in zip(plain, batch, strict=True)])
    assert bool((flipped ^ kept).all())  # each plain copy is the image or its mirror, never anything else
    assert flipped.any() and kept.any()  # p=0.5 over 6 images with this seed: both occur
    for k in range(1, 4):
        assert torch.equal(out[6 * k : 6 * (k + 1)], torch.rot90(plain, k, dims=(-2, -1)))
    # counter-clockwise: the top-right corner of the plain image becomes the top-left corner of rot90
    assert torch.equal(out[6][:, 0, 0], plain[0][:, 0, -1])


def test_rotations_with_none_augmentation_are_exact_rotations() -> None:
    batch = _pattern(3)
    out = make_views("rotations4", batch, "none", _gen(), 4)
    expected = torch.cat([torch.rot90(batch, k, dims=(-2, -1)) for k in range(4)])
    assert torch.equal(out, expected)


def _crop_offsets(copy: torch.Tensor, source: torch.Tensor, pad: int) -> list[tuple[int, int]]:
    """Every (top, left) offset at which ``copy`` is a crop of ``source`` zero-padded by ``pad`` (explicit loops)."""
    padded = F.pad(source, (pad, pad, pad, pad))
    size = source.shape[-1]
    return [(top, left) for top in range(2 * pad + 1) for left in range(2 * pad + 1)
            if torch.equal(padded[:, top : top + size, left : left + size], copy)]


def test_each_rotated_copy_is_cropped_on_its_own_and_never_flipped_twice() -> None:
    batch, pad, count = _pattern(4, 3, 8), 2, 4
    out = make_views("rotations4", batch, "crop_flip", _gen(11), pad)
    offsets = set()
    for i in range(count):
        matches = []
        for mirrored in (False, True):
            base = batch[i].flip(-1) if mirrored else batch[i]
            found = [_crop_offsets(out[k * count + i], torch.rot90(base, k, dims=(-2, -1)), pad) for k in range(4)]
            if all(found):  # one flip decision shared by the 4 copies
                matches.append(mirrored)
                offsets.update(f[0] for f in found)
        assert len(matches) == 1, f"image {i}: copies are not crops of one consistently mirrored image"
    assert len(offsets) > 3  # the 16 copies do not all share one crop offset


def test_rotations4_rejects_non_square_images() -> None:
    batch = torch.zeros(2, 3, 8, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="square"):
        make_views("rotations4", batch, "crop_flip", _gen(), 4)


def test_rotations4_jitter_translates_by_jitter_pad_and_does_not_flip() -> None:
    batch = _pattern(8)
    out = make_views("rotations4", batch, "jitter", _gen(2), 0)  # jitter pads by JITTER_PAD=2, as in "single"
    for i in range(8):
        for k in range(4):
            assert _crop_offsets(out[k * 8 + i], torch.rot90(batch[i], k, dims=(-2, -1)), 2)


# ------------------------------------------------------------------------------------------------ weak_strong


def test_weak_is_the_dataset_augmentation_and_comes_first() -> None:
    batch = _random_images(6)
    out = make_views("weak_strong", batch, "crop_flip", _gen(7), 4)
    assert torch.equal(out[:6], apply_augmentation(batch, "crop_flip", _gen(7), 4))
    assert torch.equal(make_views("weak_strong", batch, "none", _gen(7), 4)[:6], batch)


def test_strong_is_randaugment_then_cutout_of_the_weak_image() -> None:
    batch = _random_images(6)
    out = make_views("weak_strong", batch, "crop_flip", _gen(8), 4)
    generator = _gen(8)
    weak = apply_augmentation(batch, "crop_flip", generator, 4)
    expected = cutout(rand_augment(weak, generator, num_ops=2, magnitude=9, num_bins=31), generator)
    assert torch.equal(out[6:], expected)
    for i in range(6):
        assert not torch.equal(out[6 + i], out[i])  # every strong image differs from its weak one


def test_strong_holds_a_zero_cutout_square() -> None:
    batch = _random_images(8, 3, 32)  # values 1..255: zeros can only come from the hole or geometric fill
    strong = make_views("weak_strong", batch, "none", _gen(9), 4)[8:]
    for image in strong:
        zero = (image == 0).all(dim=0)
        # the hole, clipped at the borders, is still at least 8×8 (centre inside the image, side 16)
        windows = F.avg_pool2d(zero[None, None].float(), kernel_size=8, stride=1)
        assert bool((windows == 1).any())


def _reference_cutout(batch: torch.Tensor, centres_y: list[int], centres_x: list[int], size: int) -> torch.Tensor:
    out = batch.clone()
    height, width = batch.shape[-2:]
    for i, (cy, cx) in enumerate(zip(centres_y, centres_x, strict=True)):
        for y in range(max(0, cy - size // 2), min(height, cy - size // 2 + size)):
            for x in range(max(0, cx - size // 2), min(width, cx - size // 2 + size)):
                out[i, :, y, x] = 0
    return out


def test_cutout_matches_a_loop_and_clips_at_the_borders() -> None:
    batch = _random_images(16, 3, 32)
    out = cutout(batch, _gen(21))
    generator = _gen(21)
    centres_y = torch.randint(0, 32, (16,), generator=generator).tolist()
    centres_x = torch.randint(0, 32, (16,), generator=generator).tolist()
    assert torch.equal(out, _reference_cutout(batch, centres_y, centres_x, 16))
    holes = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert holes.max() == 256  # a full 16×16 square somewhere ...
    assert holes.min() < 256  # ... and one clipped at a border (this seed)


# ------------------------------------------------------------------------------------------------ RandAugment


def test_randaugment_magnitudes_at_9_of_31() -> None:
    values = {name: op_magnitude(name, 9, 31, 32, 32) for name in RANDAUGMENT_OPS}
    assert values["ShearX"] == pytest.approx(0.09) and values["Rotate"] == pytest.approx(9.0)
    assert int(values["TranslateX"]) == 4 and values["Brightness"] == pytest.approx(0.27)
    assert values["Posterize"] == 7 and values["Solarize"] == pytest.approx(0.7)
    assert values["Identity"] is None and len(RANDAUGMENT_OPS) == 14
    with pytest.raises(ValueError, match="magnitude"):
        op_magnitude("Rotate", 31, 31, 32, 32)


def test_grouped_randaugment_equals_applying_each_images_ops_one_by_one() -> None:
    batch = _random_images(40, 3, 16)
    ops, negate = draw_ops(40, _gen(13), 2)
    grouped = apply_drawn_ops(batch, ops, negate, 9, 31)
    assert torch.equal(grouped, rand_augment(batch, _gen(13)))
    assert len(set(ops.flatten().tolist())) == 14  # every op is exercised
    for i in range(40):  # the reference: per-image loop
        image = batch[i : i + 1]
        for round_ in range(2):
            name = RANDAUGMENT_OPS[int(ops[round_, i])]
            value = op_magnitude(name, 9, 31, 16, 16)
            if name in SIGNED_OPS and bool(negate[round_, i]):
                value = -value
            image = apply_op(image, name, value)
        assert torch.equal(grouped[i : i + 1], image), f"image {i}"


def test_apply_op_matches_torchvision_randaugment() -> None:
    from torchvision.transforms import v2

    reference = v2.RandAugment()
    apply_reference = getattr(reference, "_apply_image_or_video_transform", None)
    if apply_reference is None:
        pytest.skip("this torchvision has no RandAugment._apply_image_or_video_transform")
    batch = _random_images(3, 3, 32)
    for name in RANDAUGMENT_OPS:
        value = op_magnitude(name, 9, 31, 32, 32)
        for sign in ((1.0, -1.0) if name in SIGNED_OPS else (1.0,)):
            signed = None if value is None else sign * value
            expected = apply_reference(batch, name, 0.0 if signed is None else signed,
                                       v2.InterpolationMode.NEAREST, {type(batch): None, "others": None})
            assert torch.equal(apply_op(batch, name, signed), expected), name


# ------------------------------------------------------------------------------------------------ speed


def test_views_are_fast_on_a_cifar_batch() -> None:
    batch = _random_images(64, 3, 32)
    timings = {}
    for view in ("single", "rotations4", "weak_strong"):
        make_views(view, batch, "crop_flip", _gen(), 4)  # warm-up
        best = float("inf")
        for seed in range(3):
            started = time.perf_counter()
            make_views(view, batch, "crop_flip", _gen(seed), 4)
            best = min(best, time.perf_counter() - started)
        timings[view] = best
    print("view time for 64×3×32×32 (best of 3):", {k: f"{v * 1000:.1f} ms" for k, v in timings.items()})
    # generous bounds for a loaded 2-core CPU; a per-image Python loop over PIL-style ops would be far slower
    assert timings["rotations4"] < 1.0
    assert timings["weak_strong"] < 2.0
