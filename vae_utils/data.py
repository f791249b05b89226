"""Data: the embedded MNIST, reproducible splits, binarization, tensors and fast batching (Chapter 1).

Images stay ``uint8`` arrays until the last moment, so that they can be hashed, compared and compressed
exactly; :func:`to_tensor` turns them into the float tensors the models eat.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

DEFAULT_MNIST_PATH = Path(__file__).resolve().parent.parent / "data" / "mnist.npz"
MNIST_SHA256 = "b5e394bc34918bacb3c7d30dae8a52f2e99dbccb1317eccfc24e1d09f564e406"
SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = 10_000
"""Images held out of the 60,000 official training images: the classic 50k/10k choice, large enough that the
standard error of a validation -ELBO (per-image spread ~25 nats / sqrt(10,000)) is about a quarter of a nat."""
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10")
KINDS = ("binarized", "8bit")
STATIC_BINARIZATION_SEED = 0
"""The one seed that binarizes the validation and test images for every binarized-MNIST number in the book."""


class DataFileError(RuntimeError):
    """The embedded data file is missing or does not match its checksum."""


class DatasetUnavailableError(RuntimeError):
    """A torchvision dataset is not on disk and could not be downloaded."""


class MNIST(NamedTuple):
    """The official MNIST arrays: images ``(N, 28, 28) uint8`` in 0..255, labels ``(N,) uint8``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Split(NamedTuple):
    """One split: images ``(N, 28, 28) uint8``, labels ``(N,) uint8`` and positions in the official array."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


def _restore_hint(path: Path) -> str:
    return (
        f"Restore it with `git checkout -- data/mnist.npz` in a clone of the book, or rebuild it with "
        f"`python data/make_mnist.py` (see data/README.md). Expected sha256 {MNIST_SHA256} at {path}."
    )


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_mnist(path: str | Path | None = None, *, verify: bool = True) -> MNIST:
    """Load the embedded MNIST (Section 1.1), checking its sha256 first so a damaged file never loads silently."""
    path = Path(path) if path is not None else DEFAULT_MNIST_PATH
    if not path.is_file():
        raise DataFileError(f"MNIST file not found: {path}. {_restore_hint(path)}")
    if verify and (actual := sha256_of_file(path)) != MNIST_SHA256:
        raise DataFileError(f"MNIST file is corrupted or was changed: sha256 {actual}. {_restore_hint(path)}")
    with np.load(path, allow_pickle=False) as arrays:
        return MNIST(*(arrays[name] for name in MNIST._fields))


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (it makes the result reproducible), got {type(seed).__name__}: {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into parts of the given fractions, keeping each
    class's share in every part.

    The result depends only on ``labels``, ``fractions`` and ``seed``. Returns sorted
    index arrays, one per fraction; their sizes are the rounded cumulative fractions
    of ``len(labels)``.
    """
    seed = _check_seed(seed)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got {labels.shape}")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size < 2:
        raise ValueError(
            f"fractions must list at least two parts, got {fractions.tolist()}"
        )
    if (fractions <= 0).any():
        raise ValueError(f"every fraction must be positive, got {fractions.tolist()}")
    if not np.isclose(fractions.sum(), 1.0, rtol=0, atol=1e-9):
        raise ValueError(
            f"fractions must add up to 1, got {fractions.tolist()} "
            f"(sum {fractions.sum():.6g})"
        )
    # Shuffle each class, give its k-th member the position (k + 0.5) / class size in
    # [0, 1], sort everything by position and cut at the exact cumulative sizes: every
    # part gets its exact size and each class's share in every part is within one
    # image of the ideal.
    rng = np.random.default_rng(seed)
    position = np.empty(labels.size)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled = members[rng.permutation(members.size)]
        position[shuffled] = (np.arange(members.size) + 0.5) / members.size
    order = np.lexsort((rng.random(labels.size), position))
    cuts = np.round(np.cumsum(fractions)[:-1] * labels.size).astype(int)
    return [np.sort(part) for part in np.split(order, cuts)]


def mnist_splits(
    seed: int = 0, validation_size: int = VALIDATION_SIZE, data: MNIST | None = None
) -> dict[str, Split]:
    """Train, validation and test splits (Section 1.2): a seeded stratified validation set carved out of the
    official training images; the official test set untouched."""
    seed = _check_seed(seed)
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
        raise TypeError(f"validation_size must be an int, got {type(validation_size).__name__}")
    data = data if data is not None else load_mnist()
    n = len(data.y_train)
    if not 0 < validation_size < n:
        raise ValueError(f"validation_size must be between 1 and {n - 1}, got {validation_size}")
    train_idx, val_idx = stratified_split(data.y_train, [1 - validation_size / n, validation_size / n], seed)
    test_idx = np.arange(len(data.y_test))
    return {
        "train": Split(data.x_train[train_idx], data.y_train[train_idx], train_idx),
        "validation": Split(data.x_train[val_idx], data.y_train[val_idx], val_idx),
        "test": Split(data.x_test, data.y_test, test_idx),
    }


def get_split(name: str, seed: int = 0, data: MNIST | None = None) -> Split:
    """One split by name: ``"train"``, ``"validation"`` or ``"test"``."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    return mnist_splits(seed=seed, data=data)[name]


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 array of grey levels 0..255, got dtype {images.dtype}")
    return images


def binarize_stochastic(images: np.ndarray, seed: int) -> np.ndarray:
    """Sample each pixel as 1 with probability ``grey/255`` (Section 1.5): the usual *binarized MNIST*.

    With a fixed seed this is a static binarization: the same images every time. Returns ``uint8`` in {0, 1}.
    """
    images = _check_images(images)
    rng = np.random.default_rng(_check_seed(seed))
    return (rng.random(images.shape) < images / 255.0).astype(np.uint8)


def binarize_threshold(images: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Pixels ``>= threshold`` become 1, the rest 0. Deterministic, but it erases the stroke's soft edges."""
    images = _check_images(images)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 1 <= threshold <= 255:
        raise ValueError(f"threshold must be an int grey level in 1..255, got {threshold!r}")
    return (images >= threshold).astype(np.uint8)


def to_tensor(images: np.ndarray, max_value: int = 255) -> torch.Tensor:
    """``(N, H, W) uint8`` in 0..max_value -> ``(N, 1, H, W) float32`` in [0, 1].

    Use ``max_value=255`` for grey levels and ``max_value=1`` for binarized images.
    """
    images = _check_images(images)
    if max_value not in (1, 255):
        raise ValueError(f"max_value must be 1 (binarized) or 255 (8-bit), got {max_value!r}")
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    if images.size and images.max() > max_value:
        raise ValueError(
            f"images hold values up to {images.max()} but max_value={max_value}; "
            "pass max_value=255 for grey-level images"
        )
    return torch.from_numpy(images.astype(np.float32) / max_value).unsqueeze(1)


def split_images(name: str, kind: str, seed: int = 0, data: MNIST | None = None) -> np.ndarray:
    """A split's images ``(N, 28, 28) uint8`` as the book models them: ``kind="8bit"`` gives grey levels 0..255;
    ``"binarized"`` gives the static stochastic binarization with :data:`STATIC_BINARIZATION_SEED` (0/1), the
    same images every time. ``seed`` is the train/validation split seed."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; choose one of {', '.join(KINDS)}")
    images = get_split(name, seed=seed, data=data).images
    return images if kind == "8bit" else binarize_stochastic(images, seed=STATIC_BINARIZATION_SEED)


def split_tensor(name: str, kind: str, seed: int = 0, data: MNIST | None = None) -> torch.Tensor:
    """:func:`split_images` as model input ``(N, 1, 28, 28) float`` in [0, 1]: k/255, or the binary pixels."""
    return to_tensor(split_images(name, kind, seed, data), max_value=255 if kind == "8bit" else 1)


def hash_images(images: np.ndarray) -> np.ndarray:
    """One sha1 hex digest per image, so that exact duplicates can be found with set operations."""
    images = np.ascontiguousarray(_check_images(images))
    return np.array([hashlib.sha1(image.tobytes()).hexdigest() for image in images])


def count_duplicates(hashes: np.ndarray) -> int:
    """How many images repeat one seen earlier in ``hashes`` (an image appearing 3 times counts 2)."""
    return int(len(hashes) - len(np.unique(hashes)))


class DeviceBatches:
    """Mini-batches cut from one tensor that lives on the device (Section 1.6).

    For 28x28 images a DataLoader spends most of its time collating tiny tensors in worker processes; keeping
    the whole split on the device and indexing it with a seeded permutation each epoch is many times faster.

    ``x``: ``(N, 1, H, W) float`` in [0, 1]. With ``dynamic_binarization=True`` each batch is re-sampled as
    Bernoulli(x), a fresh binarization every epoch. ``labels`` (optional) are returned beside the images.
    """

    def __init__(
        self,
        x: torch.Tensor,
        batch_size: int,
        *,
        labels: torch.Tensor | None = None,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dynamic_binarization: bool = False,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            raise TypeError("x must be a float tensor of shape (N, C, H, W); convert images with to_tensor()")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if labels is not None and len(labels) != len(x):
            raise ValueError(f"labels has {len(labels)} entries but x has {len(x)} images")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.labels = labels.to(self.device) if labels is not None else None
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.dynamic_binarization = dynamic_binarization
        self.drop_last = drop_last
        self.generator = torch.Generator(device=self.device).manual_seed(_check_seed(seed))

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.x[idx]
            if self.dynamic_binarization:
                batch = torch.bernoulli(batch, generator=self.generator)
            yield batch if self.labels is None else (batch, self.labels[idx])

    def state_dict(self) -> dict:
        """The generator state, so that a resumed run draws the same batches as an uninterrupted one."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def make_dataloader(
    x: torch.Tensor, batch_size: int, *, labels: torch.Tensor | None = None, shuffle: bool = True, seed: int = 0
) -> torch.utils.data.DataLoader:
    """A plain seeded ``DataLoader`` over tensors: the slow-but-familiar path that :class:`DeviceBatches` beats."""
    tensors = (x,) if labels is None else (x, labels)
    generator = torch.Generator().manual_seed(_check_seed(seed))
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def load_torchvision(name: str, root: str | Path, *, train: bool = True, download: bool = True):
    """Images ``uint8 (N, H, W)`` or ``(N, H, W, 3)`` and labels ``(N,)`` of a torchvision dataset.

    Downloads into ``root`` when the files are not there yet. Offline, it raises
    :class:`DatasetUnavailableError` saying how to get the files, instead of a stack of socket errors.
    """
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)}")
    import torchvision  # slow to import; only this function needs it

    cls = getattr(torchvision.datasets, name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every failed mirror
            dataset = cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as error:  # "Dataset not found", "Error downloading", URLError, socket errors
        if not download:
            raise DatasetUnavailableError(
                f"{name} is not in {root} and download=False. Call load_torchvision({name!r}, {str(root)!r}) on "
                f"a machine with internet access, then copy the folder {root} here."
            ) from error
        raise DatasetUnavailableError(
            f"could not download {name} into {root} ({error}). This machine seems to be offline. Run the same "
            f"call on a machine with internet access, copy the folder {root} here and call again; or use the "
            "embedded MNIST with vae_utils.data.load_mnist()."
        ) from error
    images = np.asarray(dataset.data)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return images.astype(np.uint8), labels
