"""The book's compression benchmark: the VAE codecs and the classical ones, side by side, from real bytes.

    python benchmarks/compression.py                  # all 10,000 test images (about 5 minutes on this 2-core CPU)
    python benchmarks/compression.py --n-images 500   # a quick look
    python benchmarks/compression.py --only-deep --deep-images 1000   # Chapter 8's rows alone, into the same file

Lossless, on the binarized test set (static stochastic binarization, seed 0) and on the 8-bit test set:
bits-back coding with the shipped ConvVAEs (every image decoded and checked bit for bit) against gzip, bz2, lzma,
PNG and lossless WebP. Lossy, on the 8-bit test images: the VAE's quantized-latent codec at several steps
against JPEG, lossy WebP and entropy-coded PCA, as PSNR against bytes per image.

Chapter 8's models (a VampPrior ConvVAE and a two-level hierarchy, ``DEEP_RUNS``) are coded on the first
``--deep-images`` binarized test images in the Bit-Swap order (decoded and checked), and on the first
``--order-images`` in both the Bit-Swap and the BB-ANS order, to compare the initial bits of a file.

Writes ``benchmarks/results/compression.json`` (Chapter 6 draws its table and figure from it) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vae_utils import baselines, codec, data, evaluate
from vae_utils.elbo import nats_to_bits_per_dim
from vae_utils.model import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
JPEG_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
WEBP_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
PCA_SETTINGS = ((10, 0.5), (20, 0.5), (40, 0.4), (80, 0.3), (160, 0.2), (320, 0.1))
VAE_STEPS = (0.1, 0.25, 0.5, 1.0, 2.0)
DEEP_RUNS = ("conv_vamp_binarized", "hvae_binarized")


def vae_lossless(run: Path, images: np.ndarray, max_value: int, order: str | None = None) -> dict:
    """Bits-back on ``images`` with the run's best.pt: real bytes, a bit-exact decode check, and the -ELBO."""
    model, _ = load_checkpoint(run / "best.pt")
    result = codec.compress(model, images, "lossless", progress=True, order=order)
    start = time.perf_counter()
    decoded = codec.decompress(model, result.data, progress=True)
    decode_seconds = time.perf_counter() - start
    if not np.array_equal(decoded, images):
        raise RuntimeError(f"bits-back with {run.name} did not restore the images exactly")
    x = data.to_tensor(images, max_value=max_value)
    nelbo = evaluate.per_image_nelbo(model, x)["nelbo"].mean().item()
    return {
        "name": f"VAE bits-back ({run.name})",
        "file_bytes": result.file_bytes,
        "bits_per_dim": result.bits_per_dim,
        "bytes_per_image": result.file_bytes / len(images),
        "net_bits_per_dim": result.net_bits_per_dim,
        "initial_bits": result.initial_bits,
        "model_nelbo_bits_per_dim": nats_to_bits_per_dim(nelbo),
        "gap_to_nelbo_percent": 100 * (result.bits_per_dim / nats_to_bits_per_dim(nelbo) - 1),
        "encode_images_per_second": len(images) / result.seconds,
        "decode_images_per_second": len(images) / decode_seconds,
        "payload_bits_per_image_first_n": {n: float(result.bits_per_image_first_n[n - 1])
                                           for n in (1, 10, 100, 1000, 10_000) if n <= len(images)},
        "parameters": model.num_parameters(),
    }


def orders(run: Path, images: np.ndarray) -> dict:
    """The same images coded in both orders of a -deep mode: initial bits and bits per image of a file of the
    first n images, n = 1 .. len(images)."""
    model, _ = load_checkpoint(run / "best.pt")
    out = {}
    for order in codec.DEEP_ORDERS:
        result = codec.compress(model, images, order=order)
        if not np.array_equal(codec.decompress(model, result.data), images):
            raise RuntimeError(f"{order} with {run.name} did not restore the images exactly")
        out[order] = {"initial_bits": result.initial_bits, "file_bytes": result.file_bytes,
                      "net_bits_per_image": float(result.net_bits.mean()),
                      "payload_bits_per_image_first_n": result.bits_per_image_first_n.tolist()}  # fmt: skip
    return out


def deep_rows(binary: np.ndarray, order_images: int, runs: tuple[str, ...] = DEEP_RUNS) -> list[dict]:
    """Chapter 8's models on ``binary``, Bit-Swap order, each with its two orders on the first images."""
    rows = []
    for name in runs:
        run = ROOT / "checkpoints" / name
        if not (run / "best.pt").is_file():
            print(f"{name}: no checkpoint, skipped")
            continue
        row = vae_lossless(run, binary, 1, order="bitswap")
        row.update(n_images=len(binary), order_n_images=min(order_images, len(binary)),
                   orders=orders(run, binary[:order_images]))  # fmt: skip
        rows.append(row)
    return rows


def classical(images: np.ndarray, levels: int) -> list[dict]:
    return [{"name": r.name, "file_bytes": r.total_bytes, **{k: v for k, v in r.to_dict().items()
                                                             if k in ("bits_per_dim", "bytes_per_image",
                                                                      "encode_images_per_second",
                                                                      "decode_images_per_second")}}
            for r in baselines.lossless_baselines(images, levels=levels)]  # fmt: skip


def lossy(images: np.ndarray, train_images: np.ndarray, run: Path) -> dict[str, list[dict]]:
    model, _ = load_checkpoint(run / "best.pt")
    curves = {"VAE latents": [{"setting": row["step"], "bytes_per_image": row["bytes_per_image"],
                               "psnr_db": row["psnr_db"]} for row in codec.rate_distortion(model, images, VAE_STEPS)]}  # fmt: skip
    pca = baselines.fit_pca(train_images)
    for name, settings in (("JPEG", JPEG_QUALITIES), ("WebP", WEBP_QUALITIES), ("PCA", PCA_SETTINGS)):
        results = baselines.rate_distortion_curve(name.lower(), images, settings, train_images=train_images, pca=pca)
        curves[name] = [{"setting": s if not isinstance(s, tuple) else list(s), "bytes_per_image": r.bytes_per_image,
                         "psnr_db": r.psnr_db} for s, r in zip(settings, results)]  # fmt: skip
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=10_000, help="first N test images (default: all 10,000)")
    parser.add_argument("--lossy-images", type=int, default=1_000, help="first N test images for the lossy curves")
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "compression.json",
                        help="results file (default: benchmarks/results/compression.json)")
    parser.add_argument("--deep-images", type=int, help="first N binarized test images for Chapter 8's models "
                        "(default: --n-images)")  # fmt: skip
    parser.add_argument("--order-images", type=int, default=100,
                        help="first N images coded in both orders, Bit-Swap and BB-ANS (default 100)")
    parser.add_argument("--only-deep", action="store_true",
                        help="code Chapter 8's models only and replace their rows in --out, keeping the rest")
    parser.add_argument("--deep-runs", nargs="+", choices=DEEP_RUNS, default=DEEP_RUNS,
                        help="with --only-deep: which of Chapter 8's models to code (default: both)")
    args = parser.parse_args()
    deep_binary = data.split_images("test", "binarized")[: args.deep_images or args.n_images]
    if args.only_deep:
        results = json.loads(args.out.read_text())
        start = time.perf_counter()
        new = {row["name"]: row for row in deep_rows(deep_binary, args.order_images, args.deep_runs)}
        old = {row["name"]: row for row in results["binarized"] if row["name"].startswith("VAE bits-back")}
        deep = [new.get(f"VAE bits-back ({n})", old.get(f"VAE bits-back ({n})")) for n in DEEP_RUNS]
        rest = [row for row in results["binarized"] if row["name"] not in {f"VAE bits-back ({n})" for n in DEEP_RUNS}]
        results["binarized"] = rest[:1] + [row for row in deep if row] + rest[1:]
        results["deep_seconds"] = time.perf_counter() - start
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        for row in (row for row in results["binarized"] if row["name"].startswith("VAE bits-back")):
            print(f"{row['name']:36s} {row['bits_per_dim']:.4f} bits/dim ({row.get('n_images', results['n_images'])} "
                  f"images), -ELBO {row['model_nelbo_bits_per_dim']:.4f}, {row['gap_to_nelbo_percent']:+.2f}%")
            for order, o in row.get("orders", {}).items():
                print(f"    {order:8s} initial bits {o['initial_bits']:.0f}")
        print(f"wrote {args.out}")
        return
    test = data.split_images("test", "8bit")[: args.n_images]
    binary = data.split_images("test", "binarized")[: args.n_images]
    start = time.perf_counter()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}",
        "n_images": len(test),
        "binarized": [vae_lossless(ROOT / "checkpoints" / "conv_binarized", binary, 1),
                      *deep_rows(deep_binary, args.order_images), *classical(binary, 2)],
        "8bit": [vae_lossless(ROOT / "checkpoints" / "conv_8bit", test, 255), *classical(test, 256)],
        "lossy_n_images": min(args.lossy_images, len(test)),
        "lossy": lossy(test[: args.lossy_images], data.get_split("train").images, ROOT / "checkpoints" / "conv_8bit"),
    }  # fmt: skip
    results["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for kind in ("binarized", "8bit"):
        print(f"\n{kind} MNIST test set, {len(test)} images (lossless)")
        print(f"{'codec':32s} {'bits/dim':>9s} {'bytes/image':>12s} {'enc img/s':>10s} {'dec img/s':>10s}")
        for row in results[kind]:
            print(f"{row['name']:32s} {row['bits_per_dim']:9.4f} {row['bytes_per_image']:12.1f} "
                  f"{row['encode_images_per_second']:10.0f} {row['decode_images_per_second']:10.0f}")  # fmt: skip
        vae = results[kind][0]
        print(f"  VAE: -ELBO {vae['model_nelbo_bits_per_dim']:.4f} bits/dim; file {vae['gap_to_nelbo_percent']:+.2f}% "
              f"from it; initial bits {vae['initial_bits']:.0f}")  # fmt: skip
    print(f"\nlossy, first {results['lossy_n_images']} 8-bit test images: PSNR (dB) at bytes per image")
    for name, curve in results["lossy"].items():
        print(f"{name:12s} " + "  ".join(f"{p['bytes_per_image']:.0f}B:{p['psnr_db']:.1f}" for p in curve))
    print(f"\nwrote {args.out} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
