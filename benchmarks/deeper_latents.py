"""Chapter 8's comparison: the N(0, I) ConvVAE, its VampPrior and hierarchical extensions, and a control, on the
same binarized test images with the same estimators.

    OMP_NUM_THREADS=1 python benchmarks/deeper_latents.py                     # IWAE on the first 1,000 images
    OMP_NUM_THREADS=1 python benchmarks/deeper_latents.py --iwae-images 10000  # on all of them (hours on 2 CPUs)

For every run: the -ELBO, rate and distortion of all 10,000 test images (one seeded z each), the rate of each
latent layer and its active units, and the importance-weighted NLL (k = 1000, seed 0, batches of 20, as
``python -m vae_utils.evaluate`` computes it) on the first ``--iwae-images`` test images, with the -ELBO of those
same images. A run whose metrics.json already holds the IWAE NLL of exactly those images is not recomputed. For a
model with a learned prior it also measures what the prior saves at that model's own encoder: the rate under
N(0, I) minus the rate under the learned prior, E_q[log p(z) - log N(z; 0, I)], a lower bound on
KL(q(z) || N(0, I)) for that encoder's aggregate posterior q(z).

The control, ``runs/conv_binarized_more``, is the N(0, I) ConvVAE trained for the same extra epochs with the same
recipe as the two new models (``CONTROL_COMMAND``); it is evaluated when present. Writes
``benchmarks/results/deeper_latents.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vae_utils import data, evaluate
from vae_utils import elbo as ve
from vae_utils.model import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "conv_binarized": ROOT / "checkpoints" / "conv_binarized",
    "conv_vamp_binarized": ROOT / "checkpoints" / "conv_vamp_binarized",
    "hvae_binarized": ROOT / "checkpoints" / "hvae_binarized",
    "conv_binarized_more": ROOT / "runs" / "conv_binarized_more",
}
CONTROL_COMMAND = (
    "OMP_NUM_THREADS=1 python -m vae_utils.train --model conv --data binarized --encoder-dense-layers 2 "
    "--init-from checkpoints/conv_binarized/best.pt --epochs 2 --batch-size 64 --lr 2e-4 --lr-warmup-epochs 0.25 "
    "--kl-warmup-epochs 0 --seed 0 --no-progress --out runs/conv_binarized_more"
)
K, SEED = 1000, 0


@torch.no_grad()
def prior_saving(model, x: torch.Tensor, seed: int = 0) -> dict:
    """Rate under N(0, I) minus rate under the model's learned prior, at the model's encoder, in nats per image."""
    generator = torch.Generator().manual_seed(seed)
    components = model.prior_components()
    total, n = torch.zeros((), dtype=torch.float64), 0
    for batch in x.split(500):
        mu, logvar = model.encode(batch)
        z = ve.reparameterize(mu, logvar, generator)
        gain = ve.prior_log_density(model, z, components) - ve.standard_normal_log_density(z)
        total += gain.double().sum()
        n += len(batch)
    return {"prior_saving_nats": (total / n).item()}


def run_metrics(name: str, folder: Path, x: torch.Tensor, iwae_images: int) -> dict:
    model, checkpoint = load_checkpoint(folder / "best.pt")
    start = time.perf_counter()
    nelbo = evaluate.per_image_nelbo(model, x, seed=SEED)
    row = {
        "name": name,
        "model_class": checkpoint["model_class"],
        "model_config": checkpoint["model_config"],
        "parameters": model.num_parameters(),
        "epoch": checkpoint.get("epoch"),
        "nelbo_nats": nelbo["nelbo"].mean().item(),
        "rate_nats": nelbo["rate"].mean().item(),
        "distortion_nats": nelbo["distortion"].mean().item(),
        "active_units": evaluate.active_units_per_layer(model, x),
    }
    if "layer_rates" in nelbo:
        row["layer_rates_nats"] = nelbo["layer_rates"].mean(dim=0).tolist()
    stored = {}
    if (folder / "metrics.json").is_file():
        stored = json.loads((folder / "metrics.json").read_text()).get("test", {})
    if stored.get("iwae_k") == K and stored.get("iwae_n_images") == iwae_images:
        nll, source = stored["iwae_nll_nats"], "metrics.json"
    else:
        nll = evaluate.per_image_iwae_nll(model, x[:iwae_images], k=K, seed=SEED, progress=True).mean().item()
        source = "computed"
    row.update(iwae_k=K, iwae_n_images=iwae_images, iwae_nll_nats=nll, iwae_source=source,
               nelbo_on_iwae_images_nats=nelbo["nelbo"][:iwae_images].mean().item())  # fmt: skip
    if getattr(model, "prior", "standard") != "standard":
        row.update(prior_saving(model, x))
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iwae-images", type=int, default=1000, help="IWAE on the first N test images (default 1000)")
    parser.add_argument("--runs", nargs="+", choices=tuple(RUNS), default=tuple(RUNS),
                        help="evaluate only these runs, keeping the others' rows in --out (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deeper_latents.json")
    args = parser.parse_args()
    x = data.split_tensor("test", "binarized")
    if not 1 <= args.iwae_images <= len(x):
        parser.error(f"--iwae-images must be in 1..{len(x)}, got {args.iwae_images}")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "n_images": len(x),
        "control_command": CONTROL_COMMAND,
        "runs": {},
    }
    if args.out.is_file():  # keep the rows of runs not evaluated this time
        kept = json.loads(args.out.read_text())["runs"]
        results["runs"] = {name: kept[name] for name in RUNS if name in kept and name not in args.runs}
    for name in args.runs:
        folder = RUNS[name]
        if not (folder / "best.pt").is_file():
            print(f"{name}: no {folder.relative_to(ROOT)}/best.pt, skipped")
            continue
        results["runs"][name] = row = run_metrics(name, folder, x, args.iwae_images)
        print(f"{name:22s} -ELBO {row['nelbo_nats']:.2f} (rate {row['rate_nats']:.2f}), IWAE-{K} NLL "
              f"{row['iwae_nll_nats']:.2f} on the first {args.iwae_images} (their -ELBO "
              f"{row['nelbo_on_iwae_images_nats']:.2f}), active units {row['active_units']}", flush=True)
    results["runs"] = {name: results["runs"][name] for name in RUNS if name in results["runs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
