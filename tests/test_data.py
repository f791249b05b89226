"""Tests for vae_utils.data: the embedded MNIST, splits, binarization, tensors and batching."""

import gzip
import shutil
import struct
import urllib.request

import numpy as np
import pytest
import torch

from vae_utils import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist()


@pytest.fixture(scope="module")
def splits(mnist):
    return data.mnist_splits(seed=0, data=mnist)


def test_load_mnist_shapes_dtypes_and_ranges(mnist):
    assert mnist.x_train.shape == (60_000, 28, 28) and mnist.x_test.shape == (10_000, 28, 28)
    assert mnist.y_train.shape == (60_000,) and mnist.y_test.shape == (10_000,)
    for array in mnist:
        assert array.dtype == np.uint8
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0
    assert set(np.unique(mnist.y_train)) == set(range(10)) == set(np.unique(mnist.y_test))


def test_load_mnist_is_the_original_order(mnist):
    # The first training labels of the official MNIST files are 5 0 4 1 9 2 1 3 1 4; the first test labels 7 2 1 0 4.
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:5].tolist() == [7, 2, 1, 0, 4]


def test_missing_file_says_how_to_restore(tmp_path):
    with pytest.raises(data.DataFileError, match="not found.*make_mnist.py"):
        data.load_mnist(tmp_path / "nope.npz")


def test_corrupted_file_is_refused_with_checksum_message(tmp_path):
    corrupted = tmp_path / "mnist.npz"
    shutil.copy(data.DEFAULT_MNIST_PATH, corrupted)
    with open(corrupted, "r+b") as file:
        file.seek(5_000_000)
        byte = file.read(1)
        file.seek(5_000_000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(data.DataFileError, match="corrupted.*sha256.*git checkout"):
        data.load_mnist(corrupted)


def test_truncated_file_is_refused(tmp_path):
    truncated = tmp_path / "mnist.npz"
    truncated.write_bytes(data.DEFAULT_MNIST_PATH.read_bytes()[:1000])
    with pytest.raises(data.DataFileError, match="corrupted"):
        data.load_mnist(truncated)


def test_split_sizes_and_test_set_untouched(mnist, splits):
    assert [len(splits[name].labels) for name in data.SPLITS] == [50_000, 10_000, 10_000]
    np.testing.assert_array_equal(splits["test"].images, mnist.x_test)
    for split in splits.values():
        assert split.images.shape == (len(split.labels), 28, 28)


def test_splits_are_disjoint_and_cover_the_training_set(splits):
    train, val = splits["train"].indices, splits["validation"].indices
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(60_000))


def test_split_is_stratified(mnist, splits):
    overall = np.bincount(mnist.y_train, minlength=10) / len(mnist.y_train)
    for name in ("train", "validation"):
        labels = splits[name].labels
        counts = np.bincount(labels, minlength=10)
        # within one image of the ideal count for every class
        assert np.all(np.abs(counts - overall * len(labels)) <= 1.0), (name, counts)


def test_split_is_deterministic_and_depends_on_seed(mnist, splits):
    again = data.mnist_splits(seed=0, data=mnist)
    np.testing.assert_array_equal(again["validation"].indices, splits["validation"].indices)
    other = data.mnist_splits(seed=1, data=mnist)
    assert not np.array_equal(other["validation"].indices, splits["validation"].indices)


def test_stratified_split_exact_sizes_for_three_parts():
    labels = np.repeat(np.arange(3), [101, 57, 42])
    parts = data.stratified_split(labels, [0.5, 0.3, 0.2], seed=3)
    assert [len(p) for p in parts] == [100, 60, 40]
    assert np.unique(np.concatenate(parts)).size == 200


@pytest.mark.parametrize(
    "fractions, match",
    [([0.5, 0.4], "add up to 1"), ([1.2, -0.2], "positive"), ([1.0], "at least two"), ([0.7, 0.2, 0.2], "add up")],
)
def test_stratified_split_rejects_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        data.stratified_split(np.zeros(10, dtype=int), fractions, seed=0)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_bad_seed_type(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        data.stratified_split(np.zeros(10, dtype=int), [0.5, 0.5], seed=seed)


def test_negative_seed():
    with pytest.raises(ValueError, match="non-negative"):
        data.binarize_stochastic(np.zeros((1, 2, 2), np.uint8), seed=-1)


def test_unknown_split_name(mnist):
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, validation, test"):
        data.get_split("valid", data=mnist)


def test_get_split_matches_mnist_splits(mnist, splits):
    np.testing.assert_array_equal(data.get_split("validation", data=mnist).indices, splits["validation"].indices)


@pytest.mark.parametrize("size", [0, 60_000, -5])
def test_bad_validation_size(mnist, size):
    with pytest.raises(ValueError, match="validation_size"):
        data.mnist_splits(validation_size=size, data=mnist)


def test_stochastic_binarization_statistics(mnist):
    images = mnist.x_test[:2000]
    binary = data.binarize_stochastic(images, seed=0)
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 1}
    # Each pixel is Bernoulli(grey/255): the mean of the samples matches the mean intensity to within 5 s.e.
    p = images / 255.0
    standard_error = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(binary.mean() - p.mean()) < 5 * standard_error
    assert np.all(binary[images == 0] == 0) and np.all(binary[images == 255] == 1)


def test_stochastic_binarization_is_static_given_the_seed(mnist):
    images = mnist.x_test[:100]
    np.testing.assert_array_equal(data.binarize_stochastic(images, 7), data.binarize_stochastic(images, 7))
    assert not np.array_equal(data.binarize_stochastic(images, 7), data.binarize_stochastic(images, 8))


def test_threshold_binarization():
    images = np.array([[[0, 127, 128, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(data.binarize_threshold(images), [[[0, 0, 1, 1]]])
    np.testing.assert_array_equal(data.binarize_threshold(images, threshold=1), [[[0, 1, 1, 1]]])
    with pytest.raises(ValueError, match="threshold"):
        data.binarize_threshold(images, threshold=0)


def test_binarization_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        data.binarize_stochastic(np.zeros((1, 28, 28), np.float32), seed=0)


def test_to_tensor_shapes_and_scaling():
    images = np.array([[[0, 51, 255]]], dtype=np.uint8)
    x = data.to_tensor(images)
    assert x.shape == (1, 1, 1, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    binary = data.to_tensor(np.array([[[0, 1]]], dtype=np.uint8), max_value=1)
    torch.testing.assert_close(binary.flatten(), torch.tensor([0.0, 1.0]))


def test_to_tensor_refuses_grey_levels_labelled_binary():
    with pytest.raises(ValueError, match="max_value=255"):
        data.to_tensor(np.array([[[0, 200]]], dtype=np.uint8), max_value=1)
    with pytest.raises(ValueError, match="shape"):
        data.to_tensor(np.zeros((28, 28), np.uint8))


def test_hashes_find_exact_duplicates():
    images = np.zeros((4, 2, 2), np.uint8)
    images[1, 0, 0] = 1
    hashes = data.hash_images(images)
    assert len(hashes) == 4 and data.count_duplicates(hashes) == 2
    assert data.count_duplicates(data.hash_images(images[:2])) == 0


def test_splits_share_no_image_content(splits):
    train = set(data.hash_images(splits["train"].images))
    val = data.hash_images(splits["validation"].images)
    # Disjoint positions; identical pixel content may still occur (MNIST has a few exact duplicates), but rarely.
    assert sum(h in train for h in val) <= 10


def test_device_batches_cover_each_image_once_per_epoch():
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1) / 10
    batches = data.DeviceBatches(x, batch_size=4, seed=0)
    assert len(batches) == 3
    seen = torch.cat(list(batches)).flatten()
    assert sorted(seen.tolist()) == sorted(x.flatten().tolist())
    epoch1, epoch2 = torch.cat(list(batches)), torch.cat(list(batches))
    assert not torch.equal(epoch1, epoch2)  # reshuffled each epoch


def test_device_batches_reproducible_and_resumable():
    x = torch.rand(50, 1, 2, 2)
    a = data.DeviceBatches(x, 8, seed=3, dynamic_binarization=True)
    b = data.DeviceBatches(x, 8, seed=3, dynamic_binarization=True)
    list(a)
    state = a.state_dict()
    list(b)
    next_a = torch.cat(list(a))
    c = data.DeviceBatches(x, 8, seed=99, dynamic_binarization=True)
    c.load_state_dict(state)
    torch.testing.assert_close(torch.cat(list(c)), next_a)
    torch.testing.assert_close(torch.cat(list(b)), next_a)


def test_dynamic_binarization_samples_bernoulli():
    x = torch.full((4000, 1, 1, 1), 0.3)
    values = torch.cat(list(data.DeviceBatches(x, 1000, seed=0, dynamic_binarization=True)))
    assert set(values.unique().tolist()) == {0.0, 1.0}
    assert abs(values.mean().item() - 0.3) < 5 * (0.3 * 0.7 / 4000) ** 0.5


def test_device_batches_with_labels_and_drop_last():
    x, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    batches = data.DeviceBatches(x, 3, labels=y, shuffle=False, drop_last=True)
    assert len(batches) == 3
    xb, yb = next(iter(batches))
    torch.testing.assert_close(xb, x[:3])
    assert yb.tolist() == [0, 1, 2]


def test_device_batches_bad_arguments():
    with pytest.raises(TypeError, match="float tensor"):
        data.DeviceBatches(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.DeviceBatches(torch.zeros(3, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        data.DeviceBatches(torch.zeros(3, 1, 2, 2), 2, labels=torch.zeros(2))


def test_make_dataloader_is_seeded():
    x = torch.rand(20, 1, 2, 2)
    first = [b[0] for b in data.make_dataloader(x, 5, seed=1)]
    second = [b[0] for b in data.make_dataloader(x, 5, seed=1)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def _write_idx_files(folder, images, labels):
    """Write images/labels in the IDX format that torchvision's MNIST-family datasets read."""
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
        for name in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            with gzip.open(folder / f"{prefix}-{name}.gz") as src, open(folder / f"{prefix}-{name}", "wb") as dst:
                dst.write(src.read())


def test_load_torchvision_reads_files_already_on_disk(tmp_path, mnist):
    _write_idx_files(tmp_path / "FashionMNIST" / "raw", mnist.x_test[:50], mnist.y_test[:50])
    images, labels = data.load_torchvision("FashionMNIST", tmp_path, download=False)
    np.testing.assert_array_equal(images, mnist.x_test[:50])
    np.testing.assert_array_equal(labels, mnist.y_test[:50])


def test_load_torchvision_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    for name in ("FashionMNIST", "CIFAR10"):
        with pytest.raises(data.DatasetUnavailableError, match="offline.*copy the folder"):
            data.load_torchvision(name, tmp_path / name)


def test_load_torchvision_missing_without_download(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="download=False"):
        data.load_torchvision("CIFAR10", tmp_path, download=False)


def test_load_torchvision_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'SVHN'.*FashionMNIST"):
        data.load_torchvision("SVHN", tmp_path)


def test_split_tensor_kinds(mnist):
    grey = data.split_tensor("validation", "8bit", data=mnist)
    binary = data.split_tensor("validation", "binarized", data=mnist)
    assert grey.shape == binary.shape == (10_000, 1, 28, 28)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(binary, data.split_tensor("validation", "binarized", data=mnist))  # static
    torch.testing.assert_close(grey * 255, (grey * 255).round())
    images = data.split_images("validation", "binarized", data=mnist)  # the same images, as uint8
    assert images.dtype == np.uint8 and np.array_equal(images, binary[:, 0].numpy().astype(np.uint8))
    assert np.array_equal(data.split_images("validation", "8bit", data=mnist), (grey[:, 0] * 255).round().numpy())
    with pytest.raises(ValueError, match="unknown data kind 'binary'.*binarized, 8bit"):
        data.split_tensor("test", "binary", data=mnist)
    with pytest.raises(ValueError, match="unknown data kind 'binary'"):
        data.split_images("test", "binary", data=mnist)
