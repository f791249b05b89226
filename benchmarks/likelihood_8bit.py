"""Which 8-bit likelihood? Validation bits/dim of the ConvVAE with a discretized logistic mixture of K components.

    python benchmarks/likelihood_8bit.py [--epochs 3] [--train-subset 10000] [--components 1 3 5 10]

K = 1 is the single discretized logistic. Every run uses the same seed, data and schedule, so the differences
come from the likelihood alone. A short run ranks the choices; the shipped model's number is in
checkpoints/conv_8bit/metrics.json.
"""

import argparse
import tempfile
import time

from vae_utils.train import Trainer, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--val-subset", type=int, default=2_000)
    parser.add_argument("--components", type=int, nargs="+", default=[1, 3, 5, 10])
    args = parser.parse_args()
    print(f"ConvVAE on 8-bit MNIST, {args.epochs} epochs on {args.train_subset:,} images, "
          f"validated on {args.val_subset:,}")  # fmt: skip
    print(f"{'K':>3s} {'parameters':>11s} {'val bits/dim':>13s} {'seconds':>8s}")
    for k in args.components:
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(data="8bit", n_components=k, epochs=args.epochs, train_subset=args.train_subset,
                                 val_subset=args.val_subset, progress=False, out=out)  # fmt: skip
            trainer = Trainer(config)
            start = time.perf_counter()
            history = trainer.fit()
        print(f"{k:3d} {trainer.model.num_parameters():11,d} {history[-1]['val_bits_per_dim']:13.4f} "
              f"{time.perf_counter() - start:8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
