"""Do the probabilities the codec hands to the entropy coder change between settings? Float decoder against the
integer decoder, on the shipped binarized ConvVAE.

    python benchmarks/portability.py                 # CPU: 1 and 2 threads, batches of 1 and 64
    python benchmarks/portability.py --device cuda   # also on a GPU: and encode on CPU, decode on GPU, and back

For ``--n-latents`` latents (bucket centres drawn at random), the decoder's P(x = 1) of every pixel is computed
in each setting. Reported per setting, against the reference (CPU, 1 thread, one image per call): the share of
probabilities that differ at all, and of those that differ after rounding to constriction's 24-bit precision;
then whether a stream coded with the reference tables decodes with that setting's tables (how many of the
images come back before the first wrong one). With ``--device cuda``, an integer-decoder file made on the CPU is
decoded on the GPU and one made on the GPU on the CPU. Writes ``benchmarks/results/portability.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import constriction
import numpy as np
import torch

from vae_utils import codec, data, shrink
from vae_utils.model import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def float_tables(model, z: torch.Tensor, batch: int, threads: int, device: str) -> np.ndarray:
    torch.set_num_threads(threads)
    model = model.to(device)
    out = [torch.sigmoid(model.decode(z[i : i + batch].to(device))).double().cpu() for i in range(0, len(z), batch)]
    model.cpu()
    return torch.cat(out).reshape(len(z), -1).numpy()


def integer_tables(model, z: torch.Tensor, batch: int, threads: int, device: str) -> np.ndarray:
    torch.set_num_threads(threads)
    model = model.to(device)
    out = np.concatenate([model.likelihood_probs(z[i : i + batch]) for i in range(0, len(z), batch)])
    model.cpu()
    return out


def images_decoded(pixels: np.ndarray, sent: np.ndarray, received: np.ndarray) -> int:
    """Code every image's pixels with the ``sent`` tables on one stack, decode with ``received``: how many images
    come back right before the first wrong one (or all of them)."""
    family = constriction.stream.model.Bernoulli(perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    for i in reversed(range(len(pixels))):
        coder.encode_reverse(pixels[i], family, sent[i])
    for i in range(len(pixels)):
        try:
            if not np.array_equal(coder.decode(family, received[i]), pixels[i]):
                return i
        except Exception:  # noqa: BLE001 - a decoder that went wrong may run out of bits
            return i
    return len(pixels)


def compare(name: str, tables: dict[str, np.ndarray], pixels: np.ndarray) -> dict:
    reference = tables["cpu, 1 thread, batch 1"]
    rows = {}
    for setting, table in tables.items():
        differ = table != reference
        rounded = np.floor(table * 2**24) != np.floor(reference * 2**24)
        rows[setting] = {"differ": float(differ.mean()), "differ_at_24_bits": float(rounded.mean()),
                         "images_decoded": images_decoded(pixels, reference, table), "images": len(pixels)}  # fmt: skip
        print(f"{name:8s} {setting:28s} differ {rows[setting]['differ']:9.2e}  at 24 bits "
              f"{rows[setting]['differ_at_24_bits']:9.2e}  decoded {rows[setting]['images_decoded']}/{len(pixels)}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-latents", type=int, default=512)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the GPU settings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "portability.json")
    args = parser.parse_args()
    model, _ = load_checkpoint(ROOT / "checkpoints" / "conv_binarized" / "best.pt")
    integer = shrink.integer_model(model, data.split_images("train", "binarized")[:500])
    buckets = torch.randint(4096, (args.n_latents, model.latent_dim), generator=torch.Generator().manual_seed(0))
    z_float = codec.latent_grid(12)[1][buckets]
    z_int = shrink.latent_grid_int(12)[1][buckets]
    settings = [("cpu", 1, 1), ("cpu", 1, 64), ("cpu", 2, 1), ("cpu", 2, 64)]
    if args.device != "cpu":
        settings += [(args.device, 1, 1), (args.device, 1, 64)]
    names = {s: f"{s[0]}, {s[1]} thread{'s' * (s[1] > 1)}, batch {s[2]}" for s in settings}
    float_t = {names[s]: float_tables(model, z_float, s[2], s[1], s[0]) for s in settings}
    int_t = {names[s]: integer_tables(integer, z_int, s[2], s[1], s[0]) for s in settings}
    rng = np.random.default_rng(1)  # pixels drawn from the reference tables: a typical stream
    pixels = (rng.random(float_t[names[settings[0]]].shape) < float_t[names[settings[0]]]).astype(np.int32)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
               "n_latents": args.n_latents, "float": compare("float", float_t, pixels),
               "integer": compare("integer", int_t, pixels)}  # fmt: skip
    if args.device != "cpu":
        images = data.split_images("test", "binarized")[:256]
        torch.set_num_threads(2)
        on_cpu = codec.compress(integer, images, lanes=16).data
        integer.to(args.device)
        on_gpu = codec.compress(integer, images, lanes=16).data
        results["cross_device"] = {"cpu_file_decodes_on_device": bool(np.array_equal(codec.decompress(integer, on_cpu), images)),
                                   "device_file_is_the_cpu_file": on_gpu == on_cpu}  # fmt: skip
        integer.cpu()
        results["cross_device"]["device_file_decodes_on_cpu"] = bool(np.array_equal(codec.decompress(integer, on_gpu), images))
        print(results["cross_device"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
