"""The fixed split of scikit-learn's digits, image validation, task example sampling."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ppl.inference.amortized.anesi.data import load_split, sample_examples, validate_images
from ppl.inference.amortized.anesi.programs import Addition


def test_split_sizes_and_disjointness():
    train, test = load_split("train"), load_split("test")
    assert train.images.shape == (1200, 64) and test.images.shape == (597, 64)
    assert np.array_equal(np.asarray(train.indices), np.arange(1200))
    assert np.array_equal(np.asarray(test.indices), np.arange(1200, 1797))
    assert not set(np.asarray(train.indices)) & set(np.asarray(test.indices))
    for split in (train, test):
        assert float(split.images.min()) == 0.0 and float(split.images.max()) == 1.0
        assert set(np.unique(np.asarray(split.labels))) == set(range(10))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_split("validation")


def test_validation_errors_are_named():
    images = np.asarray(load_split("test").images[:4])
    assert validate_images(images.reshape(4, 8, 8)).shape == (4, 64)
    with pytest.raises(ValueError, match=r"raw load_digits values in \[0, 16\]"):
        validate_images(images * 16)
    with pytest.raises(ValueError, match=r"expected images shaped \(\.\.\., 8, 8\) or "
                                         r"\(\.\.\., 64\), got shape \(4, 7, 7\)"):
        validate_images(np.zeros((4, 7, 7)))
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        validate_images(images - 1.0)
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        validate_images(images * 100)
    with pytest.raises(ValueError, match="pixels must be finite"):
        validate_images(np.full((2, 64), np.nan))
    with pytest.raises(ValueError, match=r"images_a: expected leading shape \('n', 2\)"):
        validate_images(images.reshape(4, 1, 64), argument="images_a", leading_shape=(None, 2))


def test_examples_are_labelled_by_the_program_only():
    split = load_split("train")
    program = Addition(2)
    examples = sample_examples(jax.random.key(3), split, program, 64)
    assert examples.images.shape == (64, 4, 64) and examples.outputs.shape == (64, 3)
    # each image is a training image with the digit class in ``symbols``
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    for image, symbol in zip(np.asarray(examples.images[0]), np.asarray(examples.symbols[0]),
                             strict=True):
        match = np.flatnonzero(np.all(images == image, axis=1))
        assert symbol in labels[match]
    np.testing.assert_array_equal(examples.outputs, program(examples.symbols))
    again = sample_examples(jax.random.key(3), split, program, 64)
    np.testing.assert_array_equal(examples.images, again.images)
