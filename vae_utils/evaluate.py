"""Metrics over a dataset: -ELBO, importance-weighted NLL, PSNR/SSIM, per-class breakdowns (Chapter 5).

``python -m vae_utils.evaluate checkpoints/conv_binarized`` evaluates a run folder's ``best.pt`` on the test set
and writes ``metrics.json`` beside it: the full-test-set numbers and a small fixed subset that the tests re-check.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_utils import data
from vae_utils.elbo import elbo, is_hierarchical, iwae_bound, nats_to_bits_per_dim
from vae_utils.model import VAE, CheckpointError, load_checkpoint

CHECK_SUBSET = {"n_images": 200, "k": 100}
"""The quick re-evaluation stored in metrics.json: first 200 test images, IWAE with k = 100."""


def _batches(x: torch.Tensor, batch_size: int, progress: bool, desc: str):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return tqdm(x.split(batch_size), desc=desc, leave=False, disable=not progress)


@torch.no_grad()
def per_image_nelbo(model: VAE, x: torch.Tensor, batch_size: int = 500, seed: int = 0,
                    progress: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """-ELBO, rate and distortion of every image, ``(N,)`` float64 nats, with one seeded z each (repeatable).

    A hierarchical model adds ``layer_rates: (N, L)``, the rate of each latent layer, bottom first.
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    parts, layers = [], []
    for batch in _batches(x, batch_size, progress, "-ELBO"):
        out = elbo(model, batch, generator=generator)
        parts.append(torch.stack([-out["elbo"], out["rate"], out["distortion"]]).double().cpu())
        if "layer_rates" in out:
            layers.append(out["layer_rates"].double().cpu())
    nelbo, rate, distortion = torch.cat(parts, dim=1)
    result = {"nelbo": nelbo, "rate": rate, "distortion": distortion}
    if layers:
        result["layer_rates"] = torch.cat(layers)
    return result


SAMPLES_PER_CALL = 2**14
"""On a GPU, :func:`per_image_iwae_nll` decodes up to this many latent samples per call by default."""


@torch.no_grad()
def per_image_iwae_nll(model: VAE, x: torch.Tensor, k: int = 1000, batch_size: int = 20, seed: int = 0,
                       progress: bool = False, chunk_size: int | None = None) -> torch.Tensor:  # fmt: skip
    """The importance-weighted estimate of -log p(x) with ``k`` samples for every image, ``(N,)`` float64 nats.

    An upper bound on the true negative log-likelihood that tightens as ``k`` grows (Burda et al., 2016).
    The noise is drawn batch by batch from one seeded generator, so a result repeats exactly for the same
    ``seed`` and ``batch_size`` on the same device. ``chunk_size`` (samples of each image per decoder call)
    changes only the floats' rounding: on the CPU it is 32 by default, on a GPU as many as fit in
    :data:`SAMPLES_PER_CALL` decodes, so that one call decodes the k samples of many images at once.
    """
    model.eval()
    batches = _batches(x, batch_size, progress, f"IWAE k={k}")
    if chunk_size is None:
        chunk_size = 32 if x.device.type == "cpu" else max(1, min(k, SAMPLES_PER_CALL // batch_size))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    parts = [-iwae_bound(model, batch, k, generator=generator, chunk_size=chunk_size).double() for batch in batches]
    return torch.cat(parts).cpu()  # one wait for the device, not one per batch


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 500,
                 level: int = 0) -> torch.Tensor:  # fmt: skip
    """Which latent dimensions are *active*: Cov_x(E_q[z_u | x]) > ``threshold`` (Burda et al., 2016).

    A dimension whose posterior mean does not vary with the image carries no information about it: the
    posterior has collapsed onto the prior there. Returns the per-dimension variances ``(latent_dim,)``;
    ``(variances > threshold).sum()`` counts the active units. For a hierarchical model, ``level`` picks the
    layer (0: z_1); the means of an upper layer are taken along the chain of means, E_q[z_2 | z_1 = E_q[z_1 | x]].
    """
    model.eval()
    means = []
    for batch in x.split(batch_size):
        mu = model.encode(batch)[0]
        for above in range(1, level + 1):
            mu = model.posterior(above, mu)[0]
        means.append(mu)
    return torch.cat(means).double().var(dim=0).cpu()


def active_units_per_layer(model: VAE, x: torch.Tensor, threshold: float = 0.01) -> list[int]:
    """The number of active units (:func:`active_units`) in each latent layer, bottom first."""
    layers = len(model.latent_dims) if is_hierarchical(model) else 1
    return [int((active_units(model, x, level=level) > threshold).sum()) for level in range(layers)]


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, ``(N,)``, for images in [0, 1] (peak 1)."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004; scikit-image, 7x7 window) of each image pair, ``(N,)``."""
    from skimage.metrics import structural_similarity

    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must both have shape (N, 1, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = x[:, 0].double().cpu().numpy(), y[:, 0].double().cpu().numpy()
    return torch.tensor([structural_similarity(p, q, data_range=1.0) for p, q in zip(a, b)])


@torch.no_grad()
def reconstructions(model: VAE, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The mean reconstruction E[x | z = mu(x)] of every image, ``(N, 1, 28, 28)`` in [0, 1]."""
    model.eval()
    return torch.cat([model.reconstruct(batch) for batch in x.split(batch_size)])


def per_class_mean(values: torch.Tensor, labels) -> dict[int, float]:
    """The mean of ``values`` over the images of each class."""
    labels = torch.as_tensor(np.asarray(labels))
    if len(labels) != len(values):
        raise ValueError(f"values has {len(values)} entries but labels has {len(labels)}")
    return {int(c): values[labels == c].double().mean().item() for c in labels.unique()}


@torch.no_grad()
def live_relus(
    model: VAE, x: torch.Tensor, batch_size: int = 500
) -> dict[str, tuple[int, int]]:
    """How many channels (after a convolution) or units (after a dense layer) of each
    ReLU in the encoder are non-zero for at least one image of ``x``:
    ``{"conv 1": (live, total), ...}``. Layers with other activations are left out.

    A ReLU that is zero for every input passes no gradient back: it is dead, and
    nothing in training revives it (Chapter 4).
    """
    model.eval()
    names, numbered, name = [], {"conv": 0, "dense": 0}, None
    for layer in model.encoder:  # name each ReLU after the layer before it
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            kind = "conv" if isinstance(layer, torch.nn.Conv2d) else "dense"
            numbered[kind] += 1
            name = f"{kind} {numbered[kind]}"
        names.append(name if isinstance(layer, torch.nn.ReLU) else None)
    live = {}
    for h in _batches(model._check_x(x), batch_size, False, "ReLUs"):
        for layer, name in zip(model.encoder, names):
            h = layer(h)
            if name is not None:  # the largest output of each channel or unit
                peak = h.amax(dim=(0, 2, 3)) if h.ndim == 4 else h.amax(dim=0)
                live[name] = live[name] | (peak > 0) if name in live else peak > 0
    return {name: (int(fired.sum()), len(fired)) for name, fired in live.items()}


def metrics_table(runs: dict[str, dict], unit: str = "nats") -> str:
    """The test metrics of several runs as a text table, one row per run (Chapter 5).

    ``runs`` maps a run's name to what :func:`evaluate_run` wrote (its metrics.json);
    ``unit`` is ``"nats"`` (per image) or ``"bits/dim"``. A second table gives the IWAE
    NLL with the -ELBO of the same images, where a run has one.
    """
    if unit not in ("nats", "bits/dim"):
        raise ValueError(f"unit must be 'nats' or 'bits/dim', got {unit!r}")
    missing = [name for name, m in runs.items() if not isinstance(m, dict) or "test" not in m]
    if missing:
        raise ValueError(
            f"runs {missing} have no 'test' metrics; pass the dicts that evaluate_run "
            "writes to metrics.json (python -m vae_utils.evaluate RUN)"
        )
    scale = 1.0 if unit == "nats" else nats_to_bits_per_dim(1.0)
    digits = 2 if unit == "nats" else 4
    lines = [
        f"{'run':15s} {'parameters':>10s} {'epochs':>6s} {'best':>4s} {'hours':>5s} "
        f"{'-ELBO':>8s} {'rate':>7s} {'distortion':>10s} {'PSNR':>5s} {'SSIM':>5s}"
    ]
    for name, m in runs.items():
        test = m["test"]
        hours = m["train_seconds"] / 3600 if "train_seconds" in m else math.nan
        lines.append(
            f"{name:15s} {m.get('parameters', 0):10,d} {m.get('epochs_trained', 0):6d} "
            f"{m.get('epoch') or 0:4d} {hours:5.2f} "
            f"{test['nelbo_nats'] * scale:8.{digits}f} {test['rate_nats'] * scale:7.{digits}f} "
            f"{test['distortion_nats'] * scale:10.{digits}f} {test['psnr_db']:5.2f} "
            f"{test['ssim']:5.3f}"
        )
    with_iwae = {name: m["test"] for name, m in runs.items() if "iwae_nll_nats" in m["test"]}
    if with_iwae:
        lines += ["", f"{'run':15s} {'images':>6s} {'k':>5s} {'-ELBO':>8s} {'IWAE NLL':>8s} {'gap':>7s}"]
    for name, test in with_iwae.items():
        n = test.get("iwae_n_images", test["n_images"])
        nelbo = test.get("nelbo_on_iwae_images_nats", test["nelbo_nats"]) * scale
        nll = test["iwae_nll_nats"] * scale
        lines.append(
            f"{name:15s} {n:6,d} {test['iwae_k']:5d} {nelbo:8.{digits}f} {nll:8.{digits}f} "
            f"{nelbo - nll:7.{digits}f}"
        )
    return "\n".join(lines)


def evaluate(
    model: VAE,
    x: torch.Tensor,
    labels=None,
    k: int = 1000,
    seed: int = 0,
    progress: bool = False,
    iwae_images: int = 0,
) -> dict:
    """All the metrics of one model on ``x``, as a JSON-ready dict (nats, bits/dim, dB).

    The IWAE NLL costs ``k`` decoder passes per image; ``iwae_images=n`` computes it on
    the first n images only (0: all) and records the -ELBO of those same images beside
    it, so the two stay comparable.
    """
    if type(iwae_images) is not int or iwae_images < 0:  # bool is not an int here
        raise ValueError(
            "iwae_images must be a non-negative int (0: all images), "
            f"got {iwae_images!r}"
        )
    start = time.perf_counter()
    nelbo = per_image_nelbo(model, x, seed=seed, progress=progress)
    result = {
        "n_images": len(x),
        "nelbo_nats": nelbo["nelbo"].mean().item(),
        "nelbo_bits_per_dim": nats_to_bits_per_dim(nelbo["nelbo"].mean().item()),
        "rate_nats": nelbo["rate"].mean().item(),
        "distortion_nats": nelbo["distortion"].mean().item(),
    }
    if "layer_rates" in nelbo:
        result["layer_rates_nats"] = nelbo["layer_rates"].mean(dim=0).tolist()
    result["active_units"] = active_units_per_layer(model, x)
    if k:
        n = min(iwae_images, len(x)) or len(x)  # the images the IWAE actually covers
        nll = per_image_iwae_nll(model, x[:n], k=k, seed=seed, progress=progress)
        result.update({
            "iwae_k": k,
            "iwae_n_images": n,
            "iwae_nll_nats": nll.mean().item(),
            "iwae_nll_bits_per_dim": nats_to_bits_per_dim(nll.mean().item()),
            "nelbo_on_iwae_images_nats": nelbo["nelbo"][:n].mean().item(),
        })
    recon = reconstructions(model, x)
    result["psnr_db"] = psnr(recon, x).mean().item()
    result["ssim"] = ssim(recon, x).mean().item()
    if labels is not None:
        result["per_class_nelbo_nats"] = per_class_mean(nelbo["nelbo"], labels)
    result["seconds"] = time.perf_counter() - start
    return result


def test_set_for(checkpoint: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The test images as the checkpoint's model expects them (static binarization or 8-bit), and labels."""
    kind = "binarized" if checkpoint["model_config"]["likelihood"] == "bernoulli" else "8bit"
    return data.split_tensor("test", kind), data.get_split("test").labels


def metrics_path(checkpoint_path: str | Path) -> Path:
    """Where :func:`evaluate_run` writes a checkpoint's metrics: ``metrics.json`` beside a
    ``best.pt``, ``<name>_metrics.json`` beside any other checkpoint file."""
    path = Path(checkpoint_path)
    return path.with_name("metrics.json" if path.name == "best.pt" else f"{path.stem}_metrics.json")


def evaluate_run(run: str | Path, k: int = 1000, progress: bool = True, iwae_images: int = 0,
                 device: str | torch.device = "cpu") -> dict:  # fmt: skip
    """Evaluate a checkpoint on the test set and write its metrics beside it (:func:`metrics_path`).

    ``run`` is a training run's folder (its ``best.pt`` is evaluated) or a checkpoint file. The test set is
    evaluated on ``device``; the check subset always on the CPU, where the tests re-check it (a GPU draws
    other random numbers from the same seed).
    """
    run = Path(run)
    checkpoint_path = run / "best.pt" if run.is_dir() else run
    folder = checkpoint_path.parent
    model, checkpoint = load_checkpoint(checkpoint_path)
    x, labels = test_set_for(checkpoint)
    device = torch.device(device)
    on_device = copy.deepcopy(model).to(device)
    metrics = {
        "checkpoint": checkpoint_path.name,
        "model_class": checkpoint["model_class"],
        "model_config": checkpoint["model_config"],
        "parameters": model.num_parameters(),
        "epoch": checkpoint.get("epoch"),
        "validation_nelbo_nats": checkpoint.get("val_nelbo"),
        "device": _describe(device),
        "test": evaluate(on_device, x.to(device), labels, k=k, progress=progress, iwae_images=iwae_images),
        "check_subset": evaluate(model, x[: CHECK_SUBSET["n_images"]], k=CHECK_SUBSET["k"]),
    }
    log = folder / "log.csv"
    if log.is_file():
        with open(log, newline="") as file:
            rows = list(csv.DictReader(file))
        metrics["epochs_trained"] = len(rows)
        metrics["train_seconds"] = float(rows[-1]["train_seconds"])
    metrics["versions"] = checkpoint["versions"]
    metrics_path(checkpoint_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available here; use --device auto or cpu")
    return device


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vae_utils.evaluate",
        description="Evaluate a checkpoint on the MNIST test set: a run folder's best.pt (writes metrics.json "
        "there) or a checkpoint file (writes metrics.json beside a best.pt, NAME_metrics.json beside NAME.pt).",
    )
    parser.add_argument("run", type=Path, help="a folder written by python -m vae_utils.train, or a .pt checkpoint")
    parser.add_argument("--k", type=int, default=1000, help="importance samples for the IWAE NLL; 0 skips it")
    parser.add_argument("--iwae-images", type=int, default=0, help="IWAE on the first N test images only; 0 = all")
    parser.add_argument("--device", default="auto", help="where to evaluate the test set: auto (cuda if there is one, "
                        "else cpu), cpu, cuda, cuda:1 (default auto); the check subset is always evaluated on the cpu")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    try:
        device = _device(args.device)
        metrics = evaluate_run(args.run, k=args.k, progress=args.progress, iwae_images=args.iwae_images, device=device)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    test = metrics["test"]
    line = f"test -ELBO {test['nelbo_nats']:.2f} nats ({test['nelbo_bits_per_dim']:.4f} bits/dim)"
    if "iwae_nll_nats" in test:
        line += f", IWAE-{test['iwae_k']} NLL {test['iwae_nll_nats']:.2f} nats "
        if test["iwae_n_images"] == test["n_images"]:
            line += f"(all {test['n_images']} images)"
        else:
            line += f"(first {test['iwae_n_images']} images; their -ELBO {test['nelbo_on_iwae_images_nats']:.2f})"
    checkpoint_path = args.run / "best.pt" if args.run.is_dir() else args.run
    print(line + f", PSNR {test['psnr_db']:.2f} dB; wrote {metrics_path(checkpoint_path)}")
    return 0 if math.isfinite(test["nelbo_nats"]) else 1


if __name__ == "__main__":
    sys.exit(main())
