"""ReLU or ELU after the ConvVAE's dense layers? Validation -ELBO and active units after a short run of each.

    python benchmarks/activations.py [--epochs 5] [--train-subset 0] [--val-subset 5000]

The book's ConvVAE has ReLU after its convolutions and, by default, ELU after its hidden dense layers
(``dense_activation="elu"``); the "relu" row trains the all-ReLU variant. Everything else (seed, initial weights,
data, schedule) is the same, so the difference comes from the activation alone. The shipped model's numbers
are in checkpoints/conv_binarized/metrics.json.
"""

import argparse
import tempfile
import time

import torch

from vae_utils import data
from vae_utils.evaluate import active_units
from vae_utils.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=0, help="first N training images; 0 = all 50,000")
    parser.add_argument("--val-subset", type=int, default=5_000)
    args = parser.parse_args()
    x_val = data.split_tensor("validation", "binarized")[: args.val_subset]
    print(f"ConvVAE on binarized MNIST, {args.epochs} epochs (cosine schedule over them, 1-epoch KL warm-up), "
          f"validated on {len(x_val):,} images; {torch.get_num_threads()} CPU threads")  # fmt: skip
    print(f"{'dense layers':>12s} {'val -ELBO':>10s} {'val rate':>9s} {'active units':>13s} {'s/epoch':>8s}")
    for activation in ("relu", "elu"):
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(dense_activation=activation, epochs=args.epochs, kl_warmup_epochs=1,
                                 train_subset=args.train_subset, val_subset=args.val_subset, progress=False, out=out)  # fmt: skip
            trainer = Trainer(config)
            start = time.perf_counter()
            last = trainer.fit()[-1]
            seconds = (time.perf_counter() - start) / args.epochs
            with torch.no_grad():
                active = int((active_units(trainer.model, x_val) > 0.01).sum())
        print(f"{activation:>12s} {last['val_nelbo']:10.2f} {last['val_rate']:9.2f} "
              f"{active:>10d}/{trainer.model.latent_dim} {seconds:8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
