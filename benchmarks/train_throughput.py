"""Training throughput (images/s) of the book's models under each speed option, side by side.

    python benchmarks/train_throughput.py [--device auto] [--steps 200] [--batch-sizes 64 128 512]
        [--variants eager compiled graphs bf16 graphs+bf16] [--models conv fc conv8] [--json FILE]

Every line times ``--steps`` steps of the real training loop, ``Trainer.train_epoch`` (batching, the ELBO,
backward, clipping, Adam, the schedules, the NaN guard), after one epoch of the same length that warms up
(and compiles). The variants are the trainer's options: eager (the default: no compiler, float32), compiled
(``--compile on``), graphs (``--compile graphs``: CUDA graphs, CUDA only), bf16 (``--precision bf16``) and
their combinations. Two ratios follow each speed: to eager float32 at the same batch size, and to eager
float32 at batch 64, the shipped runs' setting. ``loader`` adds the DataLoader path (eager, batch of the
first size) to show what keeping the images on the device saves.

Numbers depend on the machine and on what else runs there; compare them only within one run.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from vae_utils import data
from vae_utils.elbo import elbo
from vae_utils.train import MODELS as MODEL_CLASSES
from vae_utils.train import TrainConfig, Trainer, pick_device

MODELS = {  # name: (label, settings); the models of the book's defaults and the fully connected baseline
    "conv": ("ConvVAE binarized", {"model": "conv", "data": "binarized"}),
    "fc": ("FCVAE binarized", {"model": "fc", "data": "binarized", "latent_dim": 20, "hidden_dim": 400}),
    "conv8": ("ConvVAE 8bit", {"model": "conv", "data": "8bit"}),
}
VARIANTS = {
    "eager": {},
    "compiled": {"compile": "on"},
    "graphs": {"compile": "graphs"},
    "bf16": {"precision": "bf16"},
    "compiled+bf16": {"compile": "on", "precision": "bf16"},
    "graphs+bf16": {"compile": "graphs", "precision": "bf16"},
    "graphs+bf16+nhwc": {"compile": "graphs", "precision": "bf16", "channels_last": True},
}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def trainer_images_per_second(settings: dict, batch_size: int, steps: int, device: torch.device) -> float:
    """Images per second of ``Trainer.train_epoch`` over ``steps`` steps, after one epoch of warm-up."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(**settings, batch_size=batch_size, train_subset=batch_size * steps, val_subset=1,
                             epochs=2, device=str(device), progress=False, out=out)  # fmt: skip
        trainer = Trainer(config)
        trainer.train_epoch()  # warm-up: allocation, kernel choice, compilation, graph capture
        start = time.perf_counter()
        trainer.train_epoch()  # ends by reading the device's flag and sums: the time includes the device's work
        return batch_size * steps / (time.perf_counter() - start)


def loader_images_per_second(settings: dict, batch_size: int, steps: int, device: torch.device) -> float:
    """The usual DataLoader path (collate on the CPU, copy each batch to the device), eager float32."""
    config = TrainConfig(**settings)
    torch.manual_seed(0)
    model = MODEL_CLASSES[config.model](**config.model_kwargs()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = data.get_split("train").images[: batch_size * steps]
    if config.data == "binarized":  # one fixed binarization: the loader has no dynamic one
        x = data.to_tensor(data.binarize_stochastic(images, seed=0), max_value=1)
    else:
        x = data.to_tensor(images)
    loader = data.make_dataloader(x, batch_size)
    generator = torch.Generator(device=device).manual_seed(0)
    for epoch in range(2):  # the first warms up
        start, seen = time.perf_counter(), 0
        for (batch,) in loader:
            batch = batch.to(device)
            loss = elbo(model, batch, generator=generator)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(batch)
        loss.item()  # wait for the device
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per line (default 200)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--variants", nargs="+", default=["eager", "compiled", "graphs", "bf16", "graphs+bf16"],
                        choices=[*VARIANTS, "loader"])  # fmt: skip
    parser.add_argument("--models", nargs="+", default=["conv"], choices=list(MODELS))
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    try:
        device = pick_device(args.device)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    print(f"device: {device} - {machine(device)}", flush=True)
    print(f"{'model':18s} {'batch':>5s}  {'variant':17s} {'images/s':>11s} {'x eager':>8s} {'x eager@64':>10s}")
    results = []
    for name in args.models:
        label, settings = MODELS[name]
        baseline = {}
        for batch_size in args.batch_sizes:
            for variant in args.variants:
                if variant == "loader" and batch_size != args.batch_sizes[0]:
                    continue
                if "graphs" in variant and device.type != "cuda":
                    print(f"{label:18s} {batch_size:5d}  {variant:17s} {'(needs CUDA)':>11s}", flush=True)
                    continue
                if variant == "loader":
                    speed = loader_images_per_second(settings, batch_size, args.steps, device)
                else:
                    speed = trainer_images_per_second(settings | VARIANTS[variant], batch_size, args.steps, device)
                if variant == "eager":
                    baseline[batch_size] = speed
                ratio = speed / baseline[batch_size] if batch_size in baseline else float("nan")
                ratio_64 = speed / baseline[64] if 64 in baseline else float("nan")
                results.append({"model": label, "batch_size": batch_size, "variant": variant, "images_per_second": speed,
                                "ratio_to_eager": ratio, "ratio_to_eager_64": ratio_64})  # fmt: skip
                print(f"{label:18s} {batch_size:5d}  {variant:17s} {speed:11,.0f} {ratio:8.2f} {ratio_64:10.2f}",
                      flush=True)  # fmt: skip
    skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
    if skips:
        print(f"note: torch.compile skipped CUDA graphs {skips} time(s); run with TORCH_LOGS=cudagraphs to see why")
    if args.json is not None:
        report = {"device": str(device), "machine": machine(device), "steps": args.steps, "results": results,
                  "cudagraph_skips": skips}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
