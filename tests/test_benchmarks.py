"""The benchmarks whose results files the chapters read: architecture.py writes its file and continues
instead of repeating runs it already has; batching.py writes both speeds and their ratio."""

import importlib.util
import json
from pathlib import Path

import pytest

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
