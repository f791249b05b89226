"""Training throughput (images/s) of the book's default ConvVAE and the FC baseline, with both batching paths.

    python benchmarks/train_throughput.py [--device auto] [--steps 50] [--batch-size 128]

Prints one line per (model, data, batching path) and the machine it ran on. Numbers depend on the machine and on
what else runs there; compare them only within one run.
"""

import argparse
import platform
import time

import torch

from vae_utils import data
from vae_utils.elbo import elbo
from vae_utils.model import FCVAE, ConvVAE
from vae_utils.train import pick_device


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


class LoaderOnDevice:
    """Batches of a DataLoader over one tensor, moved to the device: the usual, slower path."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        return (batch.to(self.device) for (batch,) in self.loader)


def images_per_second(model, batches, steps: int, warmup: int = 5) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    done, start = 0, None
    while True:
        for i, x in enumerate(batches):
            if done == warmup:
                if x.is_cuda:
                    torch.cuda.synchronize()
                start, seen = time.perf_counter(), 0
            loss = elbo(model, x, generator=generator)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if start is not None:
                seen += len(x)
            if done == warmup + steps:
                if x.is_cuda:
                    torch.cuda.synchronize()
                return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device: {device} - {machine(device)}")
    train_images = data.get_split("train").images[:20_000]
    x = data.to_tensor(train_images)
    cases = [("ConvVAE", ConvVAE, "binarized"), ("FCVAE", FCVAE, "binarized"), ("ConvVAE", ConvVAE, "8bit")]
    for name, cls, kind in cases:
        likelihood = "bernoulli" if kind == "binarized" else "logistic_mixture"
        paths = {
            "DeviceBatches": data.DeviceBatches(x, args.batch_size, device=device, dynamic_binarization=kind == "binarized"),
        }
        if kind == "8bit":  # the DataLoader path only for one case: it shows the batching overhead
            paths["DataLoader"] = LoaderOnDevice(data.make_dataloader(x, args.batch_size), device)
        for path, batches in paths.items():
            torch.manual_seed(0)
            model = cls(likelihood=likelihood).to(device)
            speed = images_per_second(model, batches, args.steps)
            print(f"{name:8s} {kind:9s} {model.num_parameters():>10,d} params  {path:13s} {speed:10,.0f} images/s")


if __name__ == "__main__":
    main()
