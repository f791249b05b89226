"""The benchmarks whose results files the chapters read: architecture.py writes its file and continues
instead of repeating runs it already has; batching.py writes both speeds and their ratio; the two training
studies of Chapter 4 (collapse.py, beta_sweep.py) run the command line tool with the chapter's settings, and
their shipped results files hold the full design."""

import importlib.util
import itertools
import json
from pathlib import Path

import pytest

from vae_utils import train

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def architecture():
    return load_script("architecture")


def test_summary_pairs_each_variant_with_the_reference_seed_by_seed(architecture):
    runs = [{"variant": v, "seed": s, "val_nelbo": nelbo, "active_units": 30, "parameters": 10,
             "seconds_per_epoch": 1.0}
            for v, s, nelbo in [("ELU", 0, 100.0), ("ELU", 1, 102.0), ("all ReLU", 0, 101.5),
                                ("all ReLU", 1, 102.5)]]  # fmt: skip
    summary = architecture.summarize(runs)
    assert summary["all ReLU"]["minus_ELU_by_seed"] == [1.5, 0.5]
    assert summary["all ReLU"]["minus_ELU_mean"] == 1.0
    assert summary["ELU"]["val_nelbo_mean"] == 101.0
    assert summary["ELU"]["val_nelbo_sd"] == pytest.approx(2**0.5)
    assert "ELU, 2 encoder layers" not in summary


def test_writes_the_results_file_and_does_not_repeat_a_run(architecture, tmp_path, monkeypatch, capsys):
    results = tmp_path / "architecture.json"
    argv = ["--epochs", "1", "--seeds", "0", "--variants", "ELU", "--train-subset", "128",
            "--val-subset", "500", "--json", str(results)]
    assert architecture.main(argv) == 0
    stored = json.loads(results.read_text())
    (run,) = stored["runs"]
    assert (run["variant"], run["seed"], stored["settings"]["epochs"]) == ("ELU", 0, 1)
    assert stored["val_images"] == 500
    assert run["val_nelbo"] == pytest.approx(run["val_rate"] + run["val_distortion"])
    assert 0 <= run["active_units"] <= run["latent_dim"] == 32
    assert stored["summary"]["ELU"]["seeds"] == [0]

    def no_training(*args):
        raise AssertionError("a run that is already in the results file was trained again")

    monkeypatch.setattr(architecture, "train_one", no_training)
    assert architecture.main(argv) == 0
    assert json.loads(results.read_text())["runs"] == stored["runs"]
    assert "wrote" in capsys.readouterr().out


def test_batching_writes_both_speeds_and_their_ratio(tmp_path):
    results = tmp_path / "batching.json"
    assert load_script("batching").main(["--repeats", "1", "--json", str(results)]) == 0
    stored = json.loads(results.read_text())
    speeds = stored["images_per_second"]
    assert set(speeds) == {"DataLoader", "DeviceBatches"} and min(speeds.values()) > 0
    assert stored["speedup"] == pytest.approx(speeds["DeviceBatches"] / speeds["DataLoader"])
    assert stored["images"] == 50_000 and stored["batch_size"] == 128


def cli_config(argv: list[str]) -> train.TrainConfig:
    """The TrainConfig that ``python -m vae_utils.train`` builds from a script's command."""
    assert argv[1:3] == ["-m", "vae_utils.train"]
    return train.config_from_args(train.build_parser().parse_args(argv[3:]))


def test_collapse_runs_the_short_run_of_chapter_4_with_the_cli():
    collapse = load_script("collapse")
    config = cli_config(collapse.command("relu", 3, 3e-3, 4, "runs/x"))
    chapter = train.TrainConfig(train_subset=3000, val_subset=1000, epochs=8, batch_size=64, lr=3e-3,
                                kl_warmup_epochs=3, seed=4, dense_activation="relu", out="runs/x",
                                progress=False)
    assert config == chapter


def test_beta_sweep_runs_the_sweep_of_chapter_4_with_the_cli():
    sweep = load_script("beta_sweep")
    config = cli_config(sweep.command(0.5, 50, 2, "runs/y"))
    chapter = train.TrainConfig(model="fc", latent_dim=32, hidden_dim=256, train_subset=10_000, val_subset=1000,
                                epochs=50, batch_size=128, lr=3e-3, kl_warmup_epochs=0, beta=0.5, seed=2,
                                out="runs/y", progress=False)
    assert config == chapter


def test_the_collapse_results_hold_every_design_and_seed():
    study = json.loads((ROOT / "benchmarks" / "results" / "collapse.json").read_text())
    threshold = study["settings"]["collapsed_when_final_val_rate_below_nats"]
    cells = {(r["lr"], r["activation"], r["kl_warmup_epochs"], r["seed"]) for r in study["runs"]}
    assert cells == set(itertools.product([3e-3, 2e-3], ["relu", "elu"], [0, 3], range(5)))
    for run in study["runs"]:
        assert len(run["val_rate"]) == len(run["val_nelbo"]) == study["settings"]["epochs"]
        assert run["final_val_rate"] == run["val_rate"][-1]
        assert run["collapsed"] == (run["final_val_rate"] < threshold)
        assert run["final_val_nelbo"] == pytest.approx(run["final_val_rate"] + run["final_val_distortion"])


def test_the_beta_sweep_results_hold_every_beta_length_and_seed():
    sweep = json.loads((ROOT / "benchmarks" / "results" / "beta_sweep.json").read_text())
    cells = {(r["epochs"], r["seed"], r["beta"]) for r in sweep["runs"]}
    assert cells == set(itertools.product([5, 50], range(3), [0.25, 0.5, 1, 2, 4, 8]))
    for run in sweep["runs"]:
        assert run["nelbo"] == pytest.approx(run["rate"] + run["distortion"])
        assert len(run["unit_rates"]) == sweep["settings"]["latent_dim"]
        assert run["units_over_0.1_nats"] == sum(rate > 0.1 for rate in run["unit_rates"])
