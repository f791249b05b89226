"""Training with several processes (DistributedDataParallel, gloo on the CPU, loopback only): the data are
shared out, the processes stay in step, only process 0 writes, torchrun runs the CLI, a crash stops the run."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vae_utils import train
from vae_utils.model import load_checkpoint

TINY = {"latent_dim": 4, "channels": (4, 8), "hidden_dim": 16, "batch_size": 64, "lr": 3e-3, "kl_warmup_epochs": 0,
        "val_subset": 200, "progress": False}  # fmt: skip
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}


def _worker(rank: int, world_size: int, folder: str, settings: dict) -> None:
    """One process of a 2-process run: train, and record the training images the encoder was given."""
    os.environ.update(LOOPBACK)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        trainer = train.Trainer(train.TrainConfig(**settings))
        seen = []
        trainer.model.encoder.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].detach().clone()) if module.training else None
        )
        trainer.fit()
        torch.save({"seen": torch.cat(seen), "history": trainer.history, "state": trainer.model.state_dict(),
                    "images": trainer.batches.x}, f"{folder}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_processes_share_out_every_batch_and_stay_in_step(tmp_path):
    settings = {**TINY, "data": "8bit", "n_components": 2, "epochs": 2, "train_subset": 320,
                "out": str(tmp_path / "run")}  # fmt: skip
    mp.spawn(_worker, args=(2, str(tmp_path), settings), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    images = ranks[0]["images"].flatten(1)
    n = len(images)
    for r in ranks:  # each process saw its half of every batch of 64: 32 images a step, 5 steps an epoch
        assert r["seen"].shape == (n, 1, 28, 28)  # two epochs of half the images
    multiset = lambda rows: [t.tolist() for t in rows.unique(dim=0, return_counts=True)]  # noqa: E731
    for epoch in range(2):  # in each epoch the two shares are disjoint and together all images, once each
        shares = [r["seen"][epoch * n // 2 : (epoch + 1) * n // 2].flatten(1) for r in ranks]
        assert multiset(torch.cat(shares)) == multiset(images)
        assert not set(map(tuple, shares[0].tolist())) & set(map(tuple, shares[1].tolist()))
    for name, value in ranks[0]["state"].items():  # the processes end with the same weights
        assert torch.equal(value, ranks[1]["state"][name]), name
    strip = [[{k: v for k, v in row.items() if "seconds" not in k} for row in r["history"]] for r in ranks]
    assert strip[0] == strip[1]  # and log the same numbers (process 0 validates, the others hear them)
    assert strip[0][1]["val_nelbo"] < strip[0][0]["val_nelbo"]
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "log.csv", "last.pt", "best.pt"}


def _torchrun(*args, timeout=240, cwd=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vae_utils.train", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **LOOPBACK},
                          cwd=cwd)  # fmt: skip


TINY_FLAGS = ["--latent-dim", "4", "--channels", "4", "8", "--hidden-dim", "16", "--batch-size", "64", "--lr", "3e-3",
              "--kl-warmup-epochs", "0", "--train-subset", "1000", "--val-subset", "200", "--no-progress"]  # fmt: skip


def test_torchrun_trains_and_the_checkpoint_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    result = _torchrun("--epochs", "3", *TINY_FLAGS, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 processes (gloo), each ~1/2 of every batch of 64" in result.stdout
    assert result.stdout.count("done: best validation -ELBO") == 1  # process 0 alone reports
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3] and int(rows[-1]["step"]) == 3 * 16
    assert float(rows[-1]["val_nelbo"]) < float(rows[0]["val_nelbo"]) - 5  # it learns
    model, checkpoint = load_checkpoint(out / "best.pt")  # in this single process
    assert checkpoint["train_config"]["batch_size"] == 64 and model.latent_dim == 4
    assert torch.load(out / "last.pt", weights_only=True)["processes"] == 2
    resumed = subprocess.run([sys.executable, "-m", "vae_utils.train", "--resume", str(out / "last.pt"), "--epochs", "4",
                              "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "from epoch 3 to 4" in resumed.stdout
    assert "written by 2 process(es) and this run has 1" in resumed.stdout  # says what it cannot continue
    assert len(list(csv.DictReader(open(out / "log.csv")))) == 4


def test_a_crashed_process_stops_the_others_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    (out / "last.pt").mkdir(parents=True)  # process 0 cannot write its checkpoint after epoch 1
    (out / "last.pt" / "keep").write_text("a folder where the checkpoint should go")
    result = _torchrun("--epochs", "50", *TINY_FLAGS, "--out", str(out), "--dist-timeout", "60", timeout=180)
    assert result.returncode != 0
    assert "error (process 0 of 2):" in result.stderr and "last.pt" in result.stderr
    assert "ChildFailedError" in result.stderr or "FAILED" in result.stderr  # torchrun's own summary
    rows = list(csv.DictReader(open(out / "log.csv"))) if (out / "log.csv").exists() else []
    assert len(rows) <= 1  # it stopped at once, not after 50 epochs


def test_a_batch_too_small_to_share_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "process_group", lambda: (0, 4))
    config = train.TrainConfig(**{**TINY, "train_subset": 130, "out": str(tmp_path / "run")})  # last batch: 2 images
    with pytest.raises(ValueError, match="4 processes share each batch, but a batch of 2 images.*--drop-last"):
        train.Trainer(config)
