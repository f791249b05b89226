"""Would a regularizer or another activation lift the shipped binarized ConvVAE? Variants of its recipe, side by side.

    python benchmarks/recipe_sweep.py [--epochs 150] [--variants base seed1 ...] [--iwae-images 2000] [--json PATH]

Every variant is the configuration in ``checkpoints/conv_binarized/config.json`` with one change:

- ``base``     unchanged (the shipped recipe);
- ``seed1``    seed 1 instead of 0: how far two runs of one recipe differ, the yardstick for the others;
- ``elu_enc``  ELU instead of ReLU after the encoder's two convolutions (the shipped model's first convolution
  has most of its ReLU channels dead);
- ``elu_all``  ELU after every convolution, the decoder's too;
- ``wd01``, ``wd05``  AdamW with decoupled weight decay 0.01 or 0.05 (the shipped run overfits: its end-of-run
  training -ELBO is about a nat below validation).

Every run also keeps an exponential moving average of its weights (decay 0.9995), which costs little, so each
variant reports the final weights, the best-on-validation weights (the ones a checkpoint ships) and the average.
The variants run at once, one process each, all on the device that ``--device auto`` picks. It is meant for a
GPU: on an H200 the six shared it at about 9 s per epoch each, so full-length runs take about 25 minutes
together, while one full-length run takes over half an hour on the book's 2-core CPU. ``--epochs`` shortens
the cosine schedule for a quicker, rougher comparison.

Prints a row per variant and set of weights: test -ELBO (all 10,000 images), and -ELBO and IWAE-1000 NLL on
the first ``--iwae-images`` test images, in nats.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vae_utils import data, evaluate
from vae_utils.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "seed1", "elu_enc", "elu_all", "wd01", "wd05")
EMA_DECAY = 0.9995


def build_trainer(variant: str, epochs: int, out: str, train_subset: int = 0) -> Trainer:
    stored = json.loads((ROOT / "checkpoints" / "conv_binarized" / "config.json").read_text())
    changes = {"epochs": epochs, "out": out, "progress": False, "train_subset": train_subset}
    changes |= {"seed1": {"seed": 1}}.get(variant, {})
    trainer = Trainer(TrainConfig.from_dict(stored | changes))
    if variant in ("elu_enc", "elu_all"):
        for seq in [trainer.model.encoder] + [trainer.model.decoder] * (variant == "elu_all"):
            for i, module in enumerate(seq):
                if isinstance(module, torch.nn.ReLU):
                    seq[i] = torch.nn.ELU()
    if variant in ("wd01", "wd05"):
        decay = {"wd01": 0.01, "wd05": 0.05}[variant]
        trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=trainer.config.lr, weight_decay=decay)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, trainer.lr_factor)
    return trainer


def run_variant(variant: str, epochs: int, iwae_images: int, train_subset: int = 0) -> dict:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as on the CPU
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(variant, epochs, out, train_subset)
        average = AveragedModel(trainer.model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
        trainer.optimizer.register_step_post_hook(lambda *_: average.update_parameters(trainer.model))
        start = time.perf_counter()
        history = trainer.fit()
        result = {"variant": variant, "epochs": epochs, "train_minutes": (time.perf_counter() - start) / 60,
                  "end_train_nelbo": history[-1]["train_nelbo"], "best_val_nelbo": trainer.best_val}  # fmt: skip
        best = copy.deepcopy(trainer.model)  # not load_checkpoint: it would rebuild the ReLUs an ELU variant replaced
        best.load_state_dict(torch.load(Path(out) / "best.pt", weights_only=True)["state_dict"])
    x_test = data.split_tensor("test", "binarized").to(trainer.device)
    for label, model in [("final", trainer.model), ("average", average.module), ("best", best)]:
        with torch.no_grad():
            nelbo = evaluate.per_image_nelbo(model, x_test)["nelbo"]
            iwae = evaluate.per_image_iwae_nll(model, x_test[:iwae_images], k=1000, batch_size=50)
            active = evaluate.active_units(model, trainer.x_val)
        result[label] = {"test_nelbo": nelbo.mean().item(), "first_nelbo": nelbo[:iwae_images].mean().item(),
                         "first_iwae": iwae.mean().item(), "active_units": int((active > 0.01).sum())}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150, help="length of every run (the cosine schedule spans it)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--iwae-images", type=int, default=2000, help="first N test images for the IWAE-1000 NLL")
    parser.add_argument("--train-subset", type=int, default=0, help="first N training images; 0 = all (default)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)  # one worker process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2 or not 1 <= args.iwae_images <= 10_000 or args.train_subset < 0:
        parser.error("--epochs must be at least 2, --iwae-images between 1 and 10000, --train-subset at least 0")
    if args.only is not None:
        args.result.write_text(json.dumps(run_variant(args.only, args.epochs, args.iwae_images, args.train_subset)))
        return
    with tempfile.TemporaryDirectory() as work:
        env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        common = [f"--epochs={args.epochs}", f"--iwae-images={args.iwae_images}", f"--train-subset={args.train_subset}"]
        workers = {
            v: subprocess.Popen(
                [sys.executable, __file__, f"--only={v}", f"--result={work}/{v}.json", *common], env=env
            )
            for v in args.variants
        }
        failed = [v for v, worker in workers.items() if worker.wait() != 0]
        if failed:
            sys.exit(f"error: the runs of {failed} failed (their output is above)")
        results = [json.loads(Path(f"{work}/{v}.json").read_text()) for v in args.variants]
    print(f"{args.epochs} epochs per run; IWAE-1000 and its -ELBO on the first {args.iwae_images:,} test images")
    print(f"{'variant':9s} {'weights':8s} {'test -ELBO':>10s} {'-ELBO':>8s} {'IWAE':>8s} {'active':>6s} "
          f"{'train end':>9s} {'best val':>8s} {'minutes':>7s}")  # fmt: skip
    for r in results:
        for label in ("best", "final", "average"):
            m = r[label]
            print(f"{r['variant']:9s} {label:8s} {m['test_nelbo']:10.3f} {m['first_nelbo']:8.3f} "
                  f"{m['first_iwae']:8.3f} {m['active_units']:6d} {r['end_train_nelbo']:9.3f} "
                  f"{r['best_val_nelbo']:8.3f} {r['train_minutes']:7.1f}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
