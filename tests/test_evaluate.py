"""Tests for vae_utils.evaluate, and a re-check of every shipped checkpoint against its metrics.json."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_utils import data, evaluate, train
from vae_utils.elbo import nats_to_bits_per_dim
from vae_utils.model import ConvVAE, load_checkpoint

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED = sorted(p.parent for p in CHECKPOINTS.glob("*/metrics.json"))


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=4, channels=(4, 8), hidden_dim=16).eval()
    x = data.split_tensor("validation", "binarized")[:60]
    return model, x


def test_per_image_nelbo_is_repeatable_and_adds_up(model_and_data):
    model, x = model_and_data
    first, second = evaluate.per_image_nelbo(model, x, batch_size=25), evaluate.per_image_nelbo(model, x, batch_size=25)
    assert first["nelbo"].shape == (60,) and first["nelbo"].dtype == torch.float64
    torch.testing.assert_close(first["nelbo"], second["nelbo"], rtol=0, atol=0)
    torch.testing.assert_close(first["nelbo"], first["rate"] + first["distortion"])


def test_iwae_nll_is_tighter_than_the_elbo(model_and_data):
    model, x = model_and_data
    nelbo = evaluate.per_image_nelbo(model, x)["nelbo"]
    nll = evaluate.per_image_iwae_nll(model, x, k=64, batch_size=16)
    assert nll.shape == (60,)
    assert nll.mean() < nelbo.mean()  # log p(x) >= IWAE_k >= ELBO in expectation; the gap is large untrained


def test_active_units_finds_dimensions_that_ignore_the_input(model_and_data):
    model, x = model_and_data
    variances = evaluate.active_units(model, x)
    assert variances.shape == (4,) and (variances > 0).all()
    collapsed = copy.deepcopy(model)
    with torch.no_grad():  # make latent 2 ignore the image: its posterior mean is the bias alone
        collapsed.encoder[-1].weight[2] = 0
    variances = evaluate.active_units(collapsed, x)
    assert variances[2] == 0 and (variances[[0, 1, 3]] > 0).all()


def test_psnr_and_ssim_known_values():
    x = torch.full((2, 1, 28, 28), 0.5)
    assert evaluate.psnr(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0])
    assert evaluate.psnr(x, x).min() >= 99  # identical images: capped, not infinite
    torch.testing.assert_close(evaluate.ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = (x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert (evaluate.ssim(x, noisy) < 0.9).all()
    with pytest.raises(ValueError, match="same shape"):
        evaluate.psnr(x, x[:1])


def test_per_class_mean():
    values = torch.tensor([1.0, 3.0, 10.0])
    assert evaluate.per_class_mean(values, [0, 0, 7]) == {0: 2.0, 7: 10.0}
    with pytest.raises(ValueError, match="labels has 2"):
        evaluate.per_class_mean(values, [0, 1])


def test_iwae_on_the_first_images(model_and_data):
    model, x = model_and_data
    part = evaluate.evaluate(model, x, k=4, iwae_images=20)
    assert part["iwae_n_images"] == 20 and part["n_images"] == len(x)
    assert part["nelbo_on_iwae_images_nats"] == pytest.approx(evaluate.per_image_nelbo(model, x)["nelbo"][:20].mean().item())
    assert evaluate.evaluate(model, x, k=4, iwae_images=10 * len(x))["iwae_n_images"] == len(x)  # what it covered
    with pytest.raises(ValueError, match="iwae_images must be a non-negative int"):
        evaluate.evaluate(model, x, k=4, iwae_images=-1)


def test_bad_batch_size(model_and_data):
    model, x = model_and_data
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        evaluate.per_image_nelbo(model, x, batch_size=0)


def test_evaluate_run_writes_metrics(tmp_path, monkeypatch):
    config = train.TrainConfig(latent_dim=4, channels=(4, 8), hidden_dim=16, epochs=1, train_subset=256,
                               val_subset=100, progress=False, out=str(tmp_path / "run"))  # fmt: skip
    train.Trainer(config).fit()
    monkeypatch.setattr(evaluate, "test_set_for", lambda ckpt: (data.split_tensor("test", "binarized")[:300],
                                                                  data.get_split("test").labels[:300]))  # fmt: skip
    metrics = evaluate.evaluate_run(tmp_path / "run", k=5, progress=False)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(metrics))
    test = metrics["test"]
    assert test["n_images"] == 300 and test["iwae_k"] == 5 and metrics["epochs_trained"] == 1
    assert test["iwae_n_images"] == 300 and test["nelbo_on_iwae_images_nats"] == pytest.approx(test["nelbo_nats"])
    assert test["nelbo_bits_per_dim"] == pytest.approx(nats_to_bits_per_dim(test["nelbo_nats"]))
    assert set(test["per_class_nelbo_nats"]) == set(range(10))
    assert metrics["check_subset"]["n_images"] == evaluate.CHECK_SUBSET["n_images"]


def test_evaluate_run_takes_a_checkpoint_file(tmp_path, monkeypatch):
    config = train.TrainConfig(latent_dim=4, channels=(4, 8), hidden_dim=16, epochs=1, train_subset=256,
                               val_subset=100, progress=False, out=str(tmp_path / "run"))  # fmt: skip
    train.Trainer(config).fit()
    monkeypatch.setattr(evaluate, "test_set_for", lambda ckpt: (data.split_tensor("test", "binarized")[:50],
                                                                  data.get_split("test").labels[:50]))  # fmt: skip
    from_folder = evaluate.evaluate_run(tmp_path / "run", k=2, progress=False)
    from_file = evaluate.evaluate_run(tmp_path / "run" / "best.pt", k=2, progress=False)
    assert from_file["test"]["nelbo_nats"] == from_folder["test"]["nelbo_nats"]
    last = evaluate.evaluate_run(tmp_path / "run" / "last.pt", k=2, progress=False)
    assert last["checkpoint"] == "last.pt"
    assert json.loads((tmp_path / "run" / "last_metrics.json").read_text())["checkpoint"] == "last.pt"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"] == "best.pt"  # not overwritten


def test_cli_takes_a_checkpoint_file_and_reports_a_missing_one(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vae_utils.evaluate", str(tmp_path / "some" / "best.pt"),
                             "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert f"checkpoint not found: {tmp_path / 'some' / 'best.pt'}" in result.stderr
    assert "best.pt/best.pt" not in result.stderr


def test_cli_reports_a_missing_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vae_utils.evaluate", str(tmp_path), "--no-progress"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


@pytest.mark.parametrize("run", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_matches_its_metrics(run):
    """Re-evaluate the fixed test subset recorded in metrics.json: the shipped weights give the shipped numbers."""
    stored = json.loads((run / "metrics.json").read_text())
    model, checkpoint = load_checkpoint(run / "best.pt")
    assert model.num_parameters() == stored["parameters"]
    x, _ = evaluate.test_set_for(checkpoint)
    subset = stored["check_subset"]
    again = evaluate.evaluate(model, x[: subset["n_images"]], k=subset["iwae_k"])
    for key in ("nelbo_nats", "iwae_nll_nats", "rate_nats", "psnr_db", "ssim"):
        assert again[key] == pytest.approx(subset[key], rel=1e-4, abs=1e-3), key
    # and the recorded full-test-set numbers are consistent with each other
    test = stored["test"]
    assert test["iwae_nll_nats"] <= test["nelbo_on_iwae_images_nats"]
    assert test["nelbo_bits_per_dim"] == pytest.approx(nats_to_bits_per_dim(test["nelbo_nats"]))


def test_shipped_checkpoints_are_all_documented():
    assert {p.name for p in SHIPPED} == {"conv_binarized", "fc_binarized", "conv_8bit",  # the book loads these
                                         "conv_vamp_binarized", "hvae_binarized"}  # Chapter 8
    for run in SHIPPED:
        assert {"best.pt", "config.json", "log.csv", "command.txt", "metrics.json"} <= {p.name for p in run.iterdir()}
        train_command, evaluate_command = (run / "command.txt").read_text().strip().splitlines()
        assert re.fullmatch(r"(OMP_NUM_THREADS=\d+ )?python -m vae_utils\.train .*--out checkpoints/" + run.name + "( .*)?",
                            train_command), train_command  # fmt: skip
        assert evaluate_command.split("python -m vae_utils.evaluate ")[1].startswith(f"checkpoints/{run.name}")


def test_live_relus_counts_the_channels_that_fire(model_and_data):
    model, x = model_and_data  # ReLU after each convolution, ELU after the dense layer
    assert set(evaluate.live_relus(model, x)) == {"conv 1", "conv 2"}
    dead = copy.deepcopy(model)
    with torch.no_grad():  # the second convolution's channels 0 and 3 never fire: a large negative bias
        dead.encoder[2].bias[[0, 3]] = -1e4
    counts = evaluate.live_relus(dead, x, batch_size=7)
    assert counts["conv 2"] == (evaluate.live_relus(model, x)["conv 2"][0] - 2, 8)
    relu = ConvVAE(latent_dim=4, channels=(4, 8), hidden_dim=16, dense_activation="relu")
    assert list(evaluate.live_relus(relu, x)) == ["conv 1", "conv 2", "dense 1"]
    assert evaluate.live_relus(relu, x)["dense 1"][1] == 16
    with pytest.raises(ValueError, match=r"shape \(B, 1, 28, 28\)"):
        evaluate.live_relus(model, x[:, :, :20])


def _metrics(nelbo, iwae=None, n=100):
    test = {"n_images": n, "nelbo_nats": nelbo, "rate_nats": 20.0, "distortion_nats": nelbo - 20.0}
    test |= {"psnr_db": 15.0, "ssim": 0.8}
    if iwae is not None:
        test |= {"iwae_k": 1000, "iwae_n_images": n // 2, "iwae_nll_nats": iwae, "nelbo_on_iwae_images_nats": nelbo - 1}
    return {"parameters": 1234, "epochs_trained": 10, "epoch": 9, "train_seconds": 7200, "test": test}


def test_metrics_table_lists_every_run_in_its_unit():
    runs = {"a": _metrics(90.0, iwae=85.0), "b": _metrics(100.0)}
    lines = evaluate.metrics_table(runs).splitlines()
    assert max(len(line) for line in lines) <= 88  # fits the website's code column
    assert lines[1].split() == ["a", "1,234", "10", "9", "2.00", "90.00", "20.00", "70.00", "15.00", "0.800"]
    assert lines[2].split()[0] == "b" and len(lines) == 6  # header, 2 runs, blank, header, 1 IWAE row
    assert lines[5].split() == ["a", "50", "1000", "89.00", "85.00", "4.00"]
    bits = evaluate.metrics_table({"a": _metrics(1 / nats_to_bits_per_dim(1.0))}, unit="bits/dim").splitlines()
    assert bits[1].split()[5] == "1.0000" and len(bits) == 2  # no IWAE: no second table


def test_metrics_table_bad_input():
    with pytest.raises(ValueError, match="unit must be 'nats' or 'bits/dim', got 'bits'"):
        evaluate.metrics_table({"a": _metrics(90.0)}, unit="bits")
    with pytest.raises(ValueError, match=r"runs \['b'\] have no 'test' metrics"):
        evaluate.metrics_table({"a": _metrics(90.0), "b": {"epoch": 3}})


def test_iwae_decodes_many_samples_per_call_and_gets_the_same_numbers(model_and_data):
    """A GPU decodes all k samples of a batch in one call; on the CPU that gives the 32-at-a-time numbers
    up to rounding, and the CPU default is exactly the arithmetic of calling iwae_bound batch by batch."""
    from vae_utils.elbo import iwae_bound

    model, x = model_and_data
    default = evaluate.per_image_iwae_nll(model, x, k=100, batch_size=20)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        by_hand = torch.cat([-iwae_bound(model, batch, 100, generator=generator).double() for batch in x.split(20)])
    assert torch.equal(default, by_hand)
    batched = evaluate.per_image_iwae_nll(model, x, k=100, batch_size=20, chunk_size=100)
    torch.testing.assert_close(batched, default, rtol=1e-5, atol=1e-3)
    assert not torch.equal(batched, evaluate.per_image_iwae_nll(model, x, k=100, batch_size=20, seed=1))


def test_evaluate_run_records_its_device(tmp_path, monkeypatch):
    config = train.TrainConfig(latent_dim=4, channels=(4, 8), hidden_dim=16, epochs=1, train_subset=128,
                               val_subset=50, progress=False, out=str(tmp_path / "run"))  # fmt: skip
    train.Trainer(config).fit()
    monkeypatch.setattr(evaluate, "test_set_for", lambda ckpt: (data.split_tensor("test", "binarized")[:40],
                                                                  data.get_split("test").labels[:40]))  # fmt: skip
    metrics = evaluate.evaluate_run(tmp_path / "run", k=2, progress=False, device="cpu")
    assert metrics["device"].startswith("cpu (")
    bad = subprocess.run([sys.executable, "-m", "vae_utils.evaluate", str(tmp_path / "run"), "--device", "cuda:0",
                          "--no-progress"], capture_output=True, text=True)  # fmt: skip
    if not torch.cuda.is_available():
        assert bad.returncode == 2 and "CUDA is not available" in bad.stderr
