"""How long the importance-weighted NLL (IWAE, k samples per image) of the test set takes on this device.

    python benchmarks/iwae_time.py [--device auto] [--run conv_binarized] [--k 1000] [--images 200]
        [--chunk-sizes 32 1000] [--json FILE]

Times ``vae_utils.evaluate.per_image_iwae_nll`` of a shipped checkpoint on the first ``--images`` test
images, once per ``chunk_size`` (samples of each image decoded per call; the noise is the same for all, drawn
20 images at a time), and projects the time to the whole test set of 10,000 images. It prints the mean NLL of
each, which differ only by rounding, and the shipped run's own time for the full evaluation (its
metrics.json; made on a CPU) beside them. "default" is the evaluator's own choice for the device.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from train_throughput import machine

from vae_utils.evaluate import per_image_iwae_nll, test_set_for
from vae_utils.model import load_checkpoint
from vae_utils.train import pick_device

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run", default="conv_binarized")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--chunk-sizes", nargs="+", default=["32", "default"], help="numbers and/or 'default'")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    try:
        device = pick_device(args.device)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    run = ROOT / "checkpoints" / args.run
    model, checkpoint = load_checkpoint(run / "best.pt", device)
    x = test_set_for(checkpoint)[0][: args.images].to(device)
    print(f"device: {device} - {machine(device)}")
    shipped = json.loads((run / "metrics.json").read_text())["test"] if (run / "metrics.json").is_file() else {}
    if shipped.get("iwae_k") == args.k and "seconds" in shipped:
        print(f"shipped {args.run}/metrics.json: the whole evaluation (IWAE-{args.k} of {shipped['iwae_n_images']:,} "
              f"images, -ELBO, PSNR, SSIM) took {shipped['seconds']:,.0f} s on the machine that made it")  # fmt: skip
    results = []
    for chunk in args.chunk_sizes:
        chunk_size = None if chunk == "default" else int(chunk)
        per_image_iwae_nll(model, x[:20], k=args.k, chunk_size=chunk_size)  # warm-up
        start = time.perf_counter()
        nll = per_image_iwae_nll(model, x, k=args.k, chunk_size=chunk_size)
        seconds = time.perf_counter() - start
        projected = seconds * 10_000 / len(x)
        results.append({"chunk_size": chunk, "images": len(x), "seconds": seconds, "projected_seconds_10000": projected,
                        "mean_nll_nats": nll.mean().item()})  # fmt: skip
        print(f"chunk {chunk:>7s}: IWAE-{args.k} of {len(x)} images in {seconds:7.2f} s, mean {nll.mean():.4f} nats "
              f"-> 10,000 images in about {projected:,.0f} s", flush=True)  # fmt: skip
    if args.json is not None:
        report = {"device": str(device), "machine": machine(device), "run": args.run, "k": args.k, "results": results}
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
