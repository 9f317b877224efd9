"""Images as uint8 at their stored size, resized/cropped/normalised per batch; augment=image."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from har_bench.core.errors import UserError
from har_bench.data.images import channel_stats, load_cifar10
from har_bench.data.splits import official_split
from har_bench.experiment.fit import bind_augment
from har_bench.experiment.prepare import prepare_data
from har_bench.experiment.spec import Training
from har_bench.training.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageAugment,
    ImageInput,
    random_resized_boxes,
)


def images(n: int = 16, h: int = 20, w: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def image_input(size=(16, 16), crop_ratio=1.0) -> ImageInput:
    return ImageInput(size, IMAGENET_MEAN, IMAGENET_STD, crop_ratio, "imagenet")


def test_evaluation_input_is_resize_centre_crop_normalise():
    x = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    out = image_input((24, 24))(x)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 5, 7], expected)
    # crop_ratio 0.5 at the stored size: nothing is resized, the centre half is cut out.
    x = images(2, 32, 32)
    half = ImageInput((16, 16), (0.0,) * 3, (1 / 255,) * 3, crop_ratio=0.5)(x)
    torch.testing.assert_close(half, x[:, :, 8:24, 8:24].float())
    # Not square: the shorter side covers the box (aspect kept), the centre is kept.
    wide = ImageInput((16, 16), (0.0,) * 3, (1 / 255,) * 3)(images(1, 16, 40))
    assert wide.shape == (1, 3, 16, 16)


def test_augment_is_deterministic_under_a_seed_and_keeps_labels():
    x, y = images(), torch.arange(16)

    def run(seed: int):
        return ImageAugment().bind(image_input(), seed=seed)(x, y)

    (a, ya), (b, _), (c, _) = run(3), run(3), run(4)
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(ya, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # Its generator state resumes the sequence exactly.
    aug = ImageAugment().bind(image_input(), seed=3)
    aug(x, y)
    state = aug.state_dict()
    expected, _ = aug(x, y)
    again = ImageAugment().bind(image_input(), seed=99)
    again.load_state_dict(state)
    assert torch.equal(again(x, y)[0], expected)


def test_each_part_of_the_augmentation():
    x, y = images(), torch.arange(16)
    plain = image_input()
    off = dict(crop=False, flip=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
    nothing = ImageAugment(**off).bind(plain, 0)
    assert not nothing.enabled
    torch.testing.assert_close(nothing(x, y)[0], plain(x))
    flipped = ImageAugment(**{**off, "flip": 1.0}).bind(plain, 0)(x, y)[0]
    torch.testing.assert_close(flipped, plain(x).flip(-1))
    for name in ("brightness", "contrast", "saturation"):
        jittered = ImageAugment(**{**off, name: 0.5}).bind(plain, 0)(x, y)[0]
        assert jittered.shape == plain(x).shape and not torch.allclose(jittered, plain(x))
    # Saturation and contrast leave a grey image grey (all channels equal).
    grey = images(4).float().mean(1, keepdim=True).expand(-1, 3, -1, -1).round().to(torch.uint8)
    unit = ImageInput((16, 16), (0.0,) * 3, (1 / 255,) * 3)
    out = ImageAugment(**{**off, "saturation": 0.5, "contrast": 0.5}).bind(unit, 0)(grey, y[:4])[0]
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_random_resized_boxes_stay_inside_and_follow_scale():
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_boxes(500, 30, 50, (0.25, 0.5), (0.75, 4 / 3), g)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 30).all() and (left + w <= 50).all()
    area = (h * w).float() / (30 * 50)
    assert area.min() > 0.2 and area.max() < 0.55  # rounding moves the edges a little
    # An aspect range the image cannot hold falls back to a centre crop.
    tall = random_resized_boxes(3, 10, 100, (0.99, 1.0), (0.1, 0.2), g)
    assert tall.tolist() == [[0, 49, 10, 2]] * 3  # width 10 x 0.2, centred


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"augment.scale=\[0.5, 0.2\] is invalid"):
        ImageAugment(scale=[0.5, 0.2])
    with pytest.raises(ValueError, match="augment.flip=2"):
        ImageAugment(flip=2)
    with pytest.raises(ValueError, match="augment=image works on images"):
        ImageAugment().bind(image_input(), 0)(torch.zeros(2, 3, 8), torch.zeros(2))


def write_cifar(base, n: int) -> None:
    """The official python batches: n images in each of the 5 training and the test batch."""
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar_at_size_224_stays_uint8_at_the_stored_size(tmp_path):
    write_cifar(tmp_path, 20)
    data = load_cifar10(tmp_path, tmp_path / "cache", size=224)
    assert data.X.dtype == np.uint8 and data.X.shape == (120, 3, 32, 32)
    assert data.image.size == (224, 224)
    prepared = prepare_data(
        lambda: data, lambda d: official_split(d, val_fraction=0.2), "official", tmp_path
    )
    for part in (prepared.train, prepared.val, prepared.test):
        assert part.X.dtype == torch.uint8 and part.X.shape[1:] == (3, 32, 32)
    assert prepared.sample.shape == (1, 3, 224, 224) and prepared.sample.dtype == torch.float32
    # No pretrained weights: the training images' statistics, computed in chunks.
    mean, std = channel_stats(data.X, prepared.split.train)
    reference = data.X[prepared.split.train].astype(np.float64) / 255
    np.testing.assert_allclose(mean, reference.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, reference.std(axis=(0, 2, 3)), rtol=1e-9)
    assert prepared.prepare.mean == tuple(mean) and prepared.prepare.normalisation == "train"
    assert prepared.model_input(prepared.test.X[:2]).shape == (2, 3, 224, 224)
    # The sensor augmentation refuses images, the image one sensor windows.
    from har_bench.training.augment import Augment

    training = Training(None, None, None, 0, augment=Augment(jitter=0.1))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="use augment=image or augment=none"):
        bind_augment(training, prepared)
    image = bind_augment(Training(None, None, None, 0, augment=ImageAugment()), prepared)  # type: ignore[arg-type]
    assert isinstance(image, ImageAugment) and image.image_input is prepared.prepare
