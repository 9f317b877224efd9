"""A small synthetic HAR-like dataset for smoke tests and CI: no download, deterministic,
learnable well above chance but not trivially (noise, per-subject shifts, jittered
frequencies), with a subject-disjoint official split like UCI-HAR's."""

from __future__ import annotations

import math

import numpy as np

from har_bench.core.errors import UserError, check_int, check_memory, is_number
from har_bench.data.base import HARData

# As in UCI-HAR, whose official split tests 9 of its 30 subjects.
TEST_FRACTION = 0.3


def load_synthetic(
    num_subjects: int = 10,
    windows_per_subject: int = 60,
    num_classes: int = 4,
    num_channels: int = 3,
    window: int = 64,
    test_fraction: float = TEST_FRACTION,
    noise: float = 0.5,
    seed: int = 0,
) -> HARData:
    """Generate class-dependent multichannel sinusoids.

    Each class has, per channel, its own base frequency (cycles per window), amplitude and
    phase offset between channels. Every window jitters frequency (+-10 %) and phase, each
    subject applies its own gain and per-channel offset (so subject-disjoint evaluation is
    harder than a random split), and Gaussian noise of std ``noise`` is added.
    The last ``ceil(test_fraction * num_subjects)`` subjects form the official test split.
    """
    num_subjects = check_int("dataset.num_subjects", num_subjects, 2)
    windows_per_subject = check_int("dataset.windows_per_subject", windows_per_subject, 1)
    num_classes = check_int("dataset.num_classes", num_classes, 2)
    num_channels = check_int("dataset.num_channels", num_channels, 1)
    window = check_int("dataset.window", window, 8)
    seed = check_int("dataset.seed", seed, 0)
    if not is_number(noise) or not math.isfinite(noise) or noise < 0:
        raise UserError(f"dataset.noise={noise!r} is invalid: expected a finite number >= 0")
    if not is_number(test_fraction) or not 0 < test_fraction < 1:
        raise UserError(
            f"dataset.test_fraction={test_fraction!r} is invalid: expected a number in (0, 1)"
        )
    num_test = math.ceil(test_fraction * num_subjects)
    if num_test >= num_subjects:
        raise UserError(
            f"dataset.test_fraction={test_fraction} puts all {num_subjects} subjects in the test "
            f"split; lower it or add subjects"
        )

    n = num_subjects * windows_per_subject
    # Built in float64: the signal and the noise side by side.
    check_memory(
        f"{n:,} windows of {num_channels} channels x {window} samples",
        16.0 * n * num_channels * window,
        "lower dataset.window, num_channels, num_subjects or windows_per_subject",
    )
    rng = np.random.default_rng(seed)
    # Class prototypes. Frequencies of different classes overlap in range, so a single
    # channel rarely identifies the class; the combination across channels does.
    freq = rng.uniform(1.0, 6.0, size=(num_classes, num_channels))
    amp = rng.uniform(0.5, 1.5, size=(num_classes, num_channels))
    chan_phase = rng.uniform(0, 2 * np.pi, size=(num_classes, num_channels))
    # Subject effects: how the "device" sits on each person.
    gain = rng.normal(1.0, 0.2, size=num_subjects).clip(0.5, 1.5)
    offset = rng.normal(0.0, 0.5, size=(num_subjects, num_channels))

    subjects = np.repeat(np.arange(1, num_subjects + 1, dtype=np.int64), windows_per_subject)
    # Balanced labels within each subject, in random order.
    y = np.concatenate(
        [rng.permutation(np.arange(windows_per_subject) % num_classes) for _ in range(num_subjects)]
    ).astype(np.int64)

    t = np.arange(window) / window  # one window spans t in [0, 1)
    f = freq[y] * rng.uniform(0.9, 1.1, size=(n, 1))  # [N, C]
    phase = chan_phase[y] + rng.uniform(0, 2 * np.pi, size=(n, 1))  # [N, C]
    X = amp[y][..., None] * np.sin(2 * np.pi * f[..., None] * t + phase[..., None])
    s = subjects - 1
    X = gain[s][:, None, None] * X + offset[s][..., None]
    X = X + noise * rng.standard_normal(X.shape)

    test_subjects = set(range(num_subjects - num_test + 1, num_subjects + 1))
    split = np.where(np.isin(subjects, list(test_subjects)), "test", "train")
    return HARData(
        name="synthetic",
        X=X.astype(np.float32),
        y=y,
        subjects=subjects,
        class_names=[f"class_{k}" for k in range(num_classes)],
        channel_names=[f"ch{c}" for c in range(num_channels)],
        official_split=split,
        sampling_rate_hz=50.0,
        info={
            "seed": seed,
            "noise": float(noise),
            "test_subjects": sorted(test_subjects),
        },
    )
