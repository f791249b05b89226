"""Chapter 7's benchmark: the shipped VAEs made small, measured on the real codec.

    python benchmarks/model_compression.py                       # all 10,000 test images (long on 2 CPU cores)
    python benchmarks/model_compression.py --n-images 1000       # a quicker run (the JSON records its settings)

For the binarized and the 8-bit ConvVAE, each variant -- float32, float16, bfloat16, int8 per channel, int8
convolutions with int4 dense layers, int8 after magnitude pruning at several sparsities (each fine-tuned through
the book's Trainer), and the integer networks (unpruned and pruned) -- gives:

- the model's bytes on disk (the compact weight file of ``vae_utils.shrink``): all of it for lossless files
  (bits-back decoding runs the encoder too), the decoder alone for lossy ones;
- the real lossless codec rate in bits/dim on the first ``--n-images`` test images, and its gap to float32;
- encode and decode images/s on a file of the first ``--speed-images`` (decoded and checked bit for bit; an
  integer model codes it in 16 lanes, so that its networks run on 16 images per call);
- the break-even number of images against the best classical codec of ``benchmarks/results/compression.json``:
  model bytes / (classical bytes per image - VAE bytes per image).

Speeds depend on the machine and on what else runs on it: the JSON records the machine and thread count.
Writes ``benchmarks/results/model_compression.json`` and the compact weight files of the pruned models into
``checkpoints/shrunk/`` (Chapter 7 reads both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vae_utils import codec, data, shrink
from vae_utils.model import load_checkpoint
from vae_utils.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SPEED_LANES = 16
RUNS = {"binarized": "conv_binarized", "8bit": "conv_8bit"}


def best_classical(kind: str) -> dict:
    """The smallest classical codec of Chapter 6's results (rows of a trained model have ``parameters``)."""
    results = json.loads((ROOT / "benchmarks" / "results" / "compression.json").read_text())
    return min((row for row in results[kind] if "parameters" not in row), key=lambda row: row["bytes_per_image"])


def measure(name: str, model, blob: bytes, images: np.ndarray, speed_images: int, classical: dict) -> dict:
    parts = shrink.bytes_by_part(blob)
    integer = getattr(model, "arithmetic", "float") == "integer"
    result = codec.compress(model, images)  # the rate: all images, lanes="auto" for an integer model
    # speed and the exactness check on a smaller file; an integer model codes it in 16 lanes
    small = codec.compress(model, images[:speed_images], lanes=SPEED_LANES if integer else "auto")
    start = time.perf_counter()
    decoded = codec.decompress(model, small.data)
    decode_seconds = time.perf_counter() - start
    if not np.array_equal(decoded, images[:speed_images]):
        raise RuntimeError(f"{name}: decoding did not restore the images")
    bytes_per_image = result.file_bytes / len(images)
    saved = classical["bytes_per_image"] - bytes_per_image
    row = {"variant": name, "model_bytes": len(blob), "decoder_bytes": parts["decoder"] + parts["overhead"],
           "bits_per_dim": result.bits_per_dim, "net_bits_per_dim": result.net_bits_per_dim,
           "bytes_per_image": bytes_per_image, "arithmetic": result.header.arithmetic, "lanes": result.header.lanes,
           "speed_lanes": small.header.lanes, "encode_images_per_second": speed_images / small.seconds,
           "decode_images_per_second": speed_images / decode_seconds,
           "break_even_images": len(blob) / saved if saved > 0 else None}  # fmt: skip
    print(f"  {name:24s} {len(blob):>10,d} B  {row['bits_per_dim']:.4f} bits/dim  "
          f"enc {row['encode_images_per_second']:6.0f}/s dec {row['decode_images_per_second']:6.0f}/s  "
          f"break-even {row['break_even_images'] or float('nan'):,.0f}", flush=True)  # fmt: skip
    return row


def pruned(model, checkpoint: dict, kind: str, amount: float, epochs: int, subset: int, out: Path):
    """Prune ``amount`` of each layer's weights (L1) and fine-tune for ``epochs`` through the Trainer."""
    config = TrainConfig.from_dict(checkpoint["train_config"])
    config = dataclasses.replace(config, epochs=epochs, lr=1e-3, lr_schedule="cosine", lr_warmup_epochs=0.0,
                                 kl_warmup_epochs=0.0, device="cpu", progress=False, train_subset=subset,
                                 out=str(out / f"finetune_{kind}_p{round(100 * amount)}"))  # fmt: skip
    return shrink.fine_tune(shrink.prune_weights(model, amount, scope="layer"), config)


def run_kind(kind: str, args) -> dict:
    model, checkpoint = load_checkpoint(ROOT / "checkpoints" / RUNS[kind] / "best.pt")
    images = data.split_images("test", kind)[: args.n_images]
    calibration = data.split_images("train", kind)[: args.calibration_images]
    classical = best_classical(kind)
    print(f"\n{kind}: {len(images)} test images; best classical codec {classical['name']} "
          f"({classical['bytes_per_image']:.2f} bytes/image on the whole test set)", flush=True)  # fmt: skip
    rows = []

    def add(name, variant, blob):
        rows.append(measure(name, variant, blob, images, args.speed_images, classical))

    add("float32", model, shrink.weight_file_bytes(model))
    for dtype, storage in (("float16", "f16"), ("bfloat16", "bf16")):
        if dtype in args.skip:
            continue
        cast = shrink.cast_weights(model, dtype)
        add(dtype, cast, shrink.weight_file_bytes(cast, storage))
    q8, codes8 = shrink.quantize_weights(model)
    add("int8", q8, shrink.weight_file_bytes(q8, codes=codes8))
    q4, codes4 = shrink.quantize_weights(model, dense_bits=4)
    add("int8 conv + int4 dense", q4, shrink.weight_file_bytes(q4, codes=codes4))
    integer = shrink.integer_model(model, calibration)
    add("integer", integer, shrink.weight_file_bytes(integer))
    args.shrunk.mkdir(parents=True, exist_ok=True)
    for amount in args.sparsities:
        tuned = pruned(model, checkpoint, kind, amount, args.finetune_epochs, args.finetune_subset, args.work)
        qp, codes = shrink.quantize_weights(tuned)
        tag = f"p{round(100 * amount)}"
        blob = shrink.weight_file_bytes(qp, codes=codes)
        (args.shrunk / f"{RUNS[kind]}_int8_{tag}.vaew").write_bytes(blob)
        add(f"int8 pruned {amount:.0%}", qp, blob)
        if amount == args.integer_sparsity:
            integer = shrink.integer_model(qp, calibration)
            blob = shrink.weight_file_bytes(integer)
            (args.shrunk / f"{RUNS[kind]}_integer_{tag}.vaew").write_bytes(blob)
            add(f"integer pruned {amount:.0%}", integer, blob)
    base = rows[0]
    for row in rows:
        row["gap_to_float32_percent"] = 100 * (row["bits_per_dim"] / base["bits_per_dim"] - 1)
        row["bytes_vs_float32"] = row["model_bytes"] / base["model_bytes"]
    return {"command": "python benchmarks/model_compression.py " + " ".join(sys.argv[1:]),
            "classical": {"name": classical["name"], "bytes_per_image": classical["bytes_per_image"]},
            "parameters": model.num_parameters(), "variants": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=10_000, help="first N test images (default: all 10,000)")
    parser.add_argument("--speed-images", type=int, default=512, help="images of the file whose encoding and "
                        "decoding are timed (and decoded and checked) (default 512)")  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=500, help="training images that set the integer "
                        "networks' activation scales (default 500)")  # fmt: skip
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.75, 0.9],
                        help="pruned fractions, each fine-tuned (none: no pruned variants)")
    parser.add_argument("--integer-sparsity", type=float, default=0.75, help="the pruned model made integer too")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning (default 2)")
    parser.add_argument("--finetune-subset", type=int, default=0, help="fine-tune on the first N training images "
                        "(default 0: all)")  # fmt: skip
    parser.add_argument("--kinds", nargs="+", default=["binarized", "8bit"], choices=list(RUNS))
    parser.add_argument("--skip", nargs="*", default=[], choices=["bfloat16"], help="variants to leave out")
    parser.add_argument("--merge", action="store_true", help="keep the results of the kinds not run from --out")
    parser.add_argument("--work", type=Path, default=Path("runs") / "model_compression",
                        help="folder for the fine-tuning runs (default runs/model_compression)")
    parser.add_argument("--shrunk", type=Path, default=ROOT / "checkpoints" / "shrunk",
                        help="where the pruned models' weight files go (default checkpoints/shrunk)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_compression.json")
    args = parser.parse_args()
    start = time.perf_counter()
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "n_images": args.n_images, "speed_images": args.speed_images,
               "finetune_epochs": args.finetune_epochs, "finetune_subset": args.finetune_subset}  # fmt: skip
    if args.merge and args.out.is_file():  # keep the other kinds' results from an earlier run
        earlier = json.loads(args.out.read_text())
        results.update({k: earlier[k] for k in RUNS if k in earlier and k not in args.kinds})
    for kind in args.kinds:
        results[kind] = run_kind(kind, args)
    results["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out} in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
