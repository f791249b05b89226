"""``python -m vae_utils.codec``: compress, decompress and inspect ``.vae`` files from the command line.

The shipped checkpoints are looked up through the package (``vae_utils.codec.CHECKPOINTS`` and
``DEFAULT_CHECKPOINTS``) when a command runs, so a caller can point the CLI at other checkpoints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vae_utils.codec import hierarchy
from vae_utils.codec.files import compress, decompress
from vae_utils.codec.format import DEEP_ORDERS, DEFAULT_LATENT_BITS, DEFAULT_STEP, model_id, read_header
from vae_utils.model import IMAGE_SHAPE, CheckpointError, load_checkpoint

PROGRESS_THRESHOLD = 100
"""The CLI shows a progress bar for more images than this."""
CHECKPOINTS = Path(__file__).resolve().parent.parent.parent / "checkpoints"
DEFAULT_CHECKPOINTS = {
    "binarized": CHECKPOINTS / "conv_binarized" / "best.pt",
    "8bit": CHECKPOINTS / "conv_8bit" / "best.pt",
}



def _package():
    """``vae_utils.codec`` itself: where the commands read ``CHECKPOINTS`` and ``DEFAULT_CHECKPOINTS``."""
    from vae_utils import codec

    return codec


def _grey(image, path: Path) -> np.ndarray:
    """A PIL image -> ``(H, W) uint8``; colour only if every pixel is grey (R = G = B) and opaque."""
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    if image.mode in ("P", "RGB", "RGBA", "LA", "PA"):
        rgba = np.asarray(image.convert("RGBA"))
        if (
            (rgba[..., 0] == rgba[..., 1]).all()
            and (rgba[..., 1] == rgba[..., 2]).all()
            and (rgba[..., 3] == 255).all()
        ):
            return np.ascontiguousarray(rgba[..., 0])
        raise ValueError(f"{path} is a colour (or transparent) {image.mode} image; the codec takes 8-bit grayscale. "
                         "Convert it first, e.g. Image.open(p).convert('L').save(q)")  # fmt: skip
    raise ValueError(f"{path} has PIL mode {image.mode}; the codec takes 8-bit grayscale (mode L). Convert it first, "
                     "e.g. Image.open(p).convert('L')")  # fmt: skip


def _size_error(path: Path, shape) -> ValueError:
    return ValueError(f"{path}: images must be 28x28 grayscale, got shape {tuple(shape)}; resize to 28x28 grayscale, "
                      "e.g. Image.open(p).convert('L').resize((28, 28))")  # fmt: skip


def _from_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE[1:]:
        raise _size_error(path, array.shape)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path} holds {array.dtype} values; the codec takes integer grey levels 0..255. If they "
                         "are in [0, 1], save (x * 255).round().astype(np.uint8)")  # fmt: skip
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path} holds values from {array.min()} to {array.max()}; grey levels must be 0..255")
    return array.astype(np.uint8)


def load_images(paths: Sequence[str | Path], key: str | None = None) -> np.ndarray:
    """Images for the CLI: PNG (or other PIL) files, ``.npy`` arrays, ``.npz`` files -> ``(N, 28, 28) uint8``."""
    from PIL import Image

    parts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            if path.suffix == ".npy":
                parts.append(_from_array(np.load(path, allow_pickle=False), path))
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as arrays:
                    names = list(arrays.keys())
                    if key is None and len(names) != 1:
                        listing = ", ".join(f"{n} {arrays[n].shape}" for n in names)
                        raise ValueError(f"{path} holds several arrays ({listing}); choose one with --key NAME")
                    name = key if key is not None else names[0]
                    if name not in names:
                        raise ValueError(f"{path} has no array {name!r}; it holds {names}")
                    parts.append(_from_array(arrays[name], path))
            else:
                with Image.open(path) as image:  # reads the header only: check the size before any pixels
                    if image.size != IMAGE_SHAPE[1:]:
                        raise _size_error(path, image.size[::-1])
                    parts.append(_grey(image, path)[None])
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - not an image, a damaged array file, a decompression bomb
            raise ValueError(
                f"cannot read {path} as a PNG or .npy/.npz array ({type(error).__name__}: {error})"
            ) from None
    if not parts:
        raise ValueError("no images given")
    return np.concatenate(parts)


def _kind_of(images: np.ndarray, kind: str) -> tuple[str, np.ndarray]:
    """``("binarized", 0/1 images)`` or ``("8bit", 0..255 images)``; "auto": binary iff all pixels are 0/1 or 0/255."""
    values = np.unique(images)
    binary01, binary255 = set(values.tolist()) <= {0, 1}, set(values.tolist()) <= {0, 255}
    if kind == "auto":
        kind = "binarized" if binary01 or binary255 else "8bit"
    if kind == "binarized":
        if not (binary01 or binary255):
            raise ValueError("--kind binarized needs binary images (every pixel 0/1 or 0/255); these are grey-level")
        return kind, (images > 0).astype(np.uint8)
    return kind, images


def _load_model(path: Path):
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; pass --checkpoint PATH (a best.pt written by python -m vae_utils.train)"
        )
    return load_checkpoint(path)[0]


def _find_checkpoint(wanted: bytes) -> Path:
    tried = []
    for path in sorted(_package().CHECKPOINTS.glob("*/best.pt")):
        try:
            if model_id(load_checkpoint(path)[0])[:16] == wanted:
                return path
        except CheckpointError:
            continue
        tried.append(path.parent.name)
    raise ValueError(f"no checkpoint under {_package().CHECKPOINTS} has model id {wanted.hex()} (tried {tried or 'none'}); "
                     "pass --checkpoint PATH, the checkpoint that compressed the file")  # fmt: skip


def _cmd_compress(args) -> int:
    kind, images = _kind_of(load_images(args.images, args.key), args.kind)
    path = args.checkpoint or _package().DEFAULT_CHECKPOINTS[kind]
    model = _load_model(Path(path))
    if model.likelihood == "logistic_mixture" and kind == "binarized":
        images = images * np.uint8(255)  # binary images are 8-bit images too (0 and 255)
    elif model.likelihood == "bernoulli" and kind == "8bit":
        raise ValueError(f"{path} models binarized images, but these are grey-level; use an 8-bit checkpoint "
                         f"(the default for grey-level images is {_package().DEFAULT_CHECKPOINTS['8bit']})")  # fmt: skip
    progress = args.progress and len(images) > PROGRESS_THRESHOLD
    mode = "lossy" if args.lossy else "lossless"
    if args.order is not None and not (mode == "lossless" and hierarchy.is_deep(model)):
        raise ValueError(f"--order applies to lossless coding with a model that has a learned prior or several "
                         f"latent layers (checkpoints/conv_vamp_binarized, checkpoints/hvae_binarized); {path} "
                         f"has one layer and an N(0, I) prior")  # fmt: skip
    result = compress(model, images, mode, latent_bits=args.latent_bits, step=args.step, progress=progress,
                      order=args.order)  # fmt: skip
    Path(args.output).write_bytes(result.data)
    order = f", {result.header.order} order" if result.header.deep else ""
    print(f"{result.header.mode}{order}: {result.n_images} images -> {args.output} ({result.file_bytes:,} bytes, "
          f"{result.bits_per_dim:.4f} bits/dim; {result.seconds:.1f} s)")  # fmt: skip
    return 0


def _cmd_decompress(args) -> int:
    from PIL import Image

    blob = Path(args.file).read_bytes()
    header = read_header(blob)
    if header.arithmetic == "integer":
        raise ValueError("this file was written with an integer model (Chapter 7); the command line decodes float "
                         "files only: in Python, codec.decompress(vae_utils.shrink.load_weights(MODEL.vaew), data)")  # fmt: skip
    path = Path(args.checkpoint) if args.checkpoint else _find_checkpoint(header.model_id)
    images = decompress(_load_model(path), blob, progress=args.progress and header.n_images > PROGRESS_THRESHOLD)
    if header.mode == "lossless-binary":
        images = images * np.uint8(255)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:05d}.png")
    print(f"{header.mode}: {len(images)} images -> {out}/00000.png ... {len(images) - 1:05d}.png")
    return 0


def _cmd_info(args) -> int:
    info = read_header(Path(args.file).read_bytes()).describe()
    width = max(map(len, info))
    for name, value in info.items():
        print(f"{name:<{width}}  {f'{value:.4f}' if isinstance(value, float) and 'bits' in name else value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vae_utils.codec",
        description="Compress 28x28 grayscale images with the book's VAEs: lossless bits-back coding or a lossy "
        "codec of quantized latents. Example: python -m vae_utils.codec compress a.png b.png -o out.vae",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="images -> a .vae file")
    c.add_argument("images", nargs="+", help="PNG files, or .npy/.npz arrays of shape (N, 28, 28) with values 0..255")
    c.add_argument("-o", "--output", required=True, help="the .vae file to write")
    how = c.add_mutually_exclusive_group()
    how.add_argument(
        "--lossless", action="store_true", help="bits-back coding; decompress restores every pixel (default)"
    )
    how.add_argument("--lossy", action="store_true", help="quantized latents; decompress gives the decoder's mean")
    c.add_argument(
        "--step",
        type=float,
        default=DEFAULT_STEP,
        help=f"lossy: quantization step of the latents; larger is smaller and blurrier (default {DEFAULT_STEP})",
    )
    c.add_argument(
        "--latent-bits",
        type=int,
        default=DEFAULT_LATENT_BITS,
        help=f"lossless: 2**bits buckets per latent dimension (default {DEFAULT_LATENT_BITS})",
    )
    c.add_argument(
        "--order",
        choices=DEEP_ORDERS,
        help="lossless, with a model that has a learned prior or several latent layers: the order of its layers' "
        "pops and pushes; bitswap borrows the initial bits of the bottom layer only, bbans those of every layer "
        "(default bitswap)",
    )
    c.add_argument(
        "--kind",
        choices=("auto", "binarized", "8bit"),
        default="auto",
        help="auto (default): binarized if every pixel is 0/1 or 0/255, else 8bit; picks the default checkpoint. "
        "Binary images are decompressed as 0/255 PNGs",
    )
    c.add_argument(
        "--checkpoint",
        help="the model (default: checkpoints/conv_binarized/best.pt for binary images, checkpoints/conv_8bit/best.pt "
        "for grey-level ones); any checkpoint of python -m vae_utils.train, e.g. checkpoints/hvae_binarized/best.pt "
        "(a latent hierarchy) or checkpoints/conv_vamp_binarized/best.pt (a VampPrior)",
    )
    c.add_argument("--key", help="the array to take from an .npz holding several (e.g. x_test)")
    d = sub.add_parser("decompress", help="a .vae file -> PNG files 00000.png, 00001.png, ...")
    d.add_argument("file")
    d.add_argument("-o", "--output", required=True, help="folder for the PNG files (created if needed)")
    d.add_argument(
        "--checkpoint",
        help="the model that compressed the file (default: the checkpoints/*/best.pt with the file's model id)",
    )
    i = sub.add_parser("info", help="print a .vae file's header: mode, model id, images, bytes, bits/dim")
    i.add_argument("file")
    for q in (c, d):
        q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"compress": _cmd_compress, "decompress": _cmd_decompress, "info": _cmd_info}[args.command]
    try:
        return command(args)
    except (ValueError, TypeError, OSError, CheckpointError) as error:  # CodecError is a ValueError
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
