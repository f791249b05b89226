"""What the ConvVAE's design choices are worth: validation -ELBO and active units after a short run of each.

    python benchmarks/architecture.py [--epochs 12] [--seeds 0 1] [--train-subset 0] [--val-subset 5000]

Three variants of the ConvVAE, each trained from the same seed on the same data with the same schedule:

- all ReLU (``dense_activation="relu"``): the plain conv VAE, whose dead ReLUs can collapse it (Chapter 4);
- ELU after the hidden dense layers (``dense_activation="elu"``): the book's default;
- the default with a second hidden dense layer in the encoder (``encoder_dense_layers=2``): a deeper encoder
  gets closer to each image's best Gaussian posterior, which shrinks the amortization gap (Chapter 5); the
  shipped binarized model has it.

The runs are the book's recipe shortened: a cosine schedule over --epochs, a 2-epoch KL warm-up, batch 64,
lr 2e-3. The shipped model's numbers are in checkpoints/conv_binarized/metrics.json. Each run takes about
--epochs x 21 s on one core of the book's 2-core CPU.
"""

import argparse
import tempfile
import time

import torch

from vae_utils import data
from vae_utils.evaluate import active_units
from vae_utils.train import TrainConfig, Trainer

VARIANTS = {
    "all ReLU": {"dense_activation": "relu", "encoder_dense_layers": 1},
    "ELU (default)": {"dense_activation": "elu", "encoder_dense_layers": 1},
    "ELU, 2 encoder layers": {"dense_activation": "elu", "encoder_dense_layers": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-subset", type=int, default=0, help="first N training images; 0 = all 50,000")
    parser.add_argument("--val-subset", type=int, default=5_000)
    args = parser.parse_args()
    x_val = data.split_tensor("validation", "binarized")[: args.val_subset]
    print(f"ConvVAE on binarized MNIST, {args.epochs} epochs (cosine schedule over them, 2-epoch KL warm-up), "
          f"validated on {len(x_val):,} images; {torch.get_num_threads()} CPU threads")  # fmt: skip
    print(f"{'variant':28s} {'seed':>4s} {'parameters':>10s} {'val -ELBO':>10s} {'val rate':>9s} "
          f"{'active units':>13s} {'s/epoch':>8s}")  # fmt: skip
    for seed in args.seeds:
        for name, settings in VARIANTS.items():
            with tempfile.TemporaryDirectory() as out:
                config = TrainConfig(**settings, epochs=args.epochs, kl_warmup_epochs=2, seed=seed,
                                     train_subset=args.train_subset, val_subset=args.val_subset, progress=False, out=out)  # fmt: skip
                trainer = Trainer(config)
                start = time.perf_counter()
                last = trainer.fit()[-1]
                seconds = (time.perf_counter() - start) / args.epochs
                with torch.no_grad():
                    active = int((active_units(trainer.model, x_val) > 0.01).sum())
            print(f"{name:28s} {seed:4d} {trainer.model.num_parameters():10,d} {last['val_nelbo']:10.2f} "
                  f"{last['val_rate']:9.2f} {active:>10d}/{trainer.model.latent_dim} {seconds:8.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
