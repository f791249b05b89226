"""Tests for vae_utils.train: the loop, resume, atomic checkpoints, the NaN guard, safe loading and the CLI."""

import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_utils import train

TINY = {"latent_dim": 4, "channels": (4, 8), "hidden_dim": 16, "batch_size": 64, "lr": 1e-3, "kl_warmup_epochs": 0,
        "train_subset": 512, "val_subset": 300, "progress": False}  # fmt: skip


def tiny_config(tmp_path, **overrides) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, "epochs": 3, "out": str(tmp_path / "run"), **overrides})


def test_training_lowers_the_loss_and_writes_its_files(tmp_path):
    config = tiny_config(tmp_path, epochs=4, lr=3e-3)
    history = train.Trainer(config).fit()
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["val_nelbo"] < history[0]["val_nelbo"] - 20
    assert history[-1]["train_nelbo"] < history[0]["train_nelbo"]
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.json", "log.csv", "last.pt", "best.pt"}
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 4 and float(rows[-1]["val_nelbo"]) == pytest.approx(history[-1]["val_nelbo"])
    assert train.TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config


def test_training_is_reproducible(tmp_path):
    a = train.Trainer(tiny_config(tmp_path / "a", epochs=1)).fit()
    b = train.Trainer(tiny_config(tmp_path / "b", epochs=1)).fit()
    assert a[0]["val_nelbo"] == b[0]["val_nelbo"] and a[0]["train_nelbo"] == b[0]["train_nelbo"]


@pytest.mark.parametrize("data_kind, lr_warmup_epochs", [("binarized", 0), ("8bit", 0), ("binarized", 1.5)])
def test_resume_equals_an_uninterrupted_run(tmp_path, data_kind, lr_warmup_epochs):
    extra = {"data": data_kind, "kl_warmup_epochs": 1.5, "n_components": 2, "lr_warmup_epochs": lr_warmup_epochs}
    straight = train.Trainer(tiny_config(tmp_path / "straight", **extra))
    straight.fit()
    interrupted = train.Trainer(tiny_config(tmp_path / "resumed", **extra))
    interrupted.fit(stop_after=2)
    resumed = train.Trainer(tiny_config(tmp_path / "resumed", **extra), resume=tmp_path / "resumed" / "run" / "last.pt")
    assert resumed.epoch == 2
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    strip = lambda h: [{k: v for k, v in row.items() if "seconds" not in k} for row in h]
    assert strip(resumed.history) == strip(straight.history)


def test_resume_with_more_epochs_extends_the_cosine_schedule(tmp_path):
    train.Trainer(tiny_config(tmp_path, epochs=2)).fit()
    extended = train.Trainer(tiny_config(tmp_path, epochs=4), resume=tmp_path / "run" / "last.pt")
    steps = len(extended.batches)
    assert extended.optimizer.param_groups[0]["lr"] == pytest.approx(TINY["lr"] * 0.5 * (1 + math.cos(math.pi / 2)))
    before = {k: v.clone() for k, v in extended.model.state_dict().items()}
    history = extended.fit()
    assert [row["epoch"] for row in history] == [1, 2, 3, 4] and history[-1]["step"] == 4 * steps
    assert history[2]["lr"] > 0 and history[3]["lr"] == pytest.approx(0, abs=1e-12)
    assert any(not torch.equal(before[k], v) for k, v in extended.model.state_dict().items())


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_warmup_ramps_then_follows_the_schedule(tmp_path, schedule):
    trainer = train.Trainer(tiny_config(tmp_path, epochs=4, lr_warmup_epochs=2, lr_schedule=schedule))
    steps, lr = len(trainer.batches), TINY["lr"]
    cosine = (lambda s: 0.5 * (1 + math.cos(math.pi * s / (4 * steps)))) if schedule == "cosine" else (lambda s: 1.0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr / (2 * steps) * cosine(0))  # the first step
    history = trainer.fit()
    assert history[0]["lr"] == pytest.approx(lr * (steps + 1) / (2 * steps) * cosine(steps))  # about halfway up
    assert history[1]["lr"] == pytest.approx(lr * cosine(2 * steps))  # the ramp is done
    assert history[3]["lr"] == pytest.approx(0 if schedule == "cosine" else lr, abs=1e-12)


def test_lr_warmup_keeps_the_encoder_relus_alive(tmp_path):
    """A large learning rate kills ReLU channels of the encoder in the first steps; a warm-up spares them."""
    dead = {}
    for warmup in (0, 1):
        trainer = train.Trainer(tiny_config(tmp_path / str(warmup), epochs=1, lr=3e-2, channels=(8, 16),
                                            train_subset=2048, lr_schedule="constant", lr_warmup_epochs=warmup))  # fmt: skip
        trainer.fit()
        with torch.no_grad():
            h = trainer.model.encoder[:4](trainer.x_val)  # conv, ReLU, conv, ReLU
        dead[warmup] = int((h.amax(dim=(0, 2, 3)) <= 0).sum())
    assert dead[1] < dead[0], dead


def test_resume_refuses_a_different_config(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    train.Trainer(config).fit()
    with pytest.raises(train.CheckpointError, match="different config.*lr"):
        train.Trainer(tiny_config(tmp_path, epochs=2, lr=0.1), resume=tmp_path / "run" / "last.pt")
    with pytest.raises(train.CheckpointError, match="weights only.*last.pt"):
        train.Trainer(tiny_config(tmp_path, epochs=2), resume=tmp_path / "run" / "best.pt")


def test_kl_warmup_ramps_beta(tmp_path):
    trainer = train.Trainer(tiny_config(tmp_path, kl_warmup_epochs=2, beta=0.5))
    steps = len(trainer.batches)
    assert trainer.beta_at(0) == pytest.approx(0.5 / (2 * steps))
    assert trainer.beta_at(steps - 1) == pytest.approx(0.25)
    assert trainer.beta_at(10 * steps) == 0.5


def test_nan_loss_stops_with_the_step(tmp_path):
    trainer = train.Trainer(tiny_config(tmp_path))
    with torch.no_grad():
        trainer.model.encoder[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(train.TrainingDivergedError, match="became nan at epoch 1, step 1.*--lr"):
        trainer.fit()


@pytest.mark.parametrize(
    "values, match",
    [({"data": "color"}, "data must be one of"), ({"epochs": 0}, "epochs must be a positive int"),
     ({"lr": float("nan")}, "lr must be"), ({"train_subset": -1}, "train_subset"), ({"epoch": 3}, "unknown config keys"),
     ({"dense_activation": "tanh"}, "dense_activation must be one of elu, relu"),
     ({"encoder_dense_layers": 0}, "encoder_dense_layers must be a positive int"),
     ({"lr_warmup_epochs": -1}, "lr_warmup_epochs must be a finite non-negative number")],
)  # fmt: skip
def test_bad_config_values(values, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values)


def test_model_settings_reach_the_model(tmp_path):
    model = train.Trainer(tiny_config(tmp_path, dense_activation="relu", encoder_dense_layers=2)).model
    assert model.config == {"latent_dim": 4, "channels": (4, 8), "hidden_dim": 16, "likelihood": "bernoulli",
                            "n_components": 5, "dense_activation": "relu", "encoder_dense_layers": 2}  # fmt: skip


def test_pick_device():
    assert train.pick_device("cpu") == torch.device("cpu")
    assert train.pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train.pick_device("cuda")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vae_utils.train", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_help_explains_every_flag():
    result = _cli("--help")
    assert result.returncode == 0
    for flag in ("--data", "--epochs", "--kl-warmup-epochs", "--resume", "--device", "--config", "--seed",
                 "--dense-activation", "--encoder-dense-layers", "--lr-warmup-epochs", "--compile", "--precision",
                 "--channels-last", "--drop-last", "--nan-check-every", "--dist-timeout", "torchrun"):  # fmt: skip
        assert flag in result.stdout
    assert "dynamic binarization" in result.stdout and "(default: None)" not in result.stdout


def test_cli_one_epoch_then_resume(tmp_path):
    flags = ["--latent-dim", "4", "--channels", "4", "8", "--hidden-dim", "16", "--encoder-dense-layers", "3",
             "--lr-warmup-epochs", "0.5", "--train-subset", "256", "--val-subset", "200", "--batch-size", "64", "--no-progress",
             "--out", str(tmp_path / "cli")]  # fmt: skip
    first = _cli("--epochs", "1", *flags)
    assert first.returncode == 0, first.stderr
    assert "done: best validation -ELBO" in first.stdout
    assert re.search(r"device (cpu \(\d+ threads?\)|cuda|mps)", first.stdout), first.stdout
    second = _cli("--resume", str(tmp_path / "cli" / "last.pt"), "--epochs", "2", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "from epoch 1 to 2" in second.stdout
    stored = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert stored["encoder_dense_layers"] == 3 and stored["lr_warmup_epochs"] == 0.5
    assert len(list(csv.DictReader(open(tmp_path / "cli" / "log.csv")))) == 2
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 1, "data": "8bit", "model": "fc", "hidden_dim": 8,
                                                      "train_subset": 128, "val_subset": 100, "out": str(tmp_path / "c2")}))  # fmt: skip
    third = _cli("--config", str(tmp_path / "config.json"), "--no-progress")
    assert third.returncode == 0, third.stderr
    assert "FCVAE" in third.stdout and "8bit" in third.stdout


def test_cli_bad_input_gives_a_one_line_error(tmp_path):
    bad = _cli("--epochs", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: epochs must be a positive int")
    missing = _cli("--resume", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    (tmp_path / "broken.json").write_text("{not json")
    broken = _cli("--config", str(tmp_path / "broken.json"))
    assert broken.returncode != 0 and "cannot read --config" in broken.stderr


def test_help_says_how_to_train_the_shipped_model_and_that_way_works():
    help_text = " ".join(train.build_parser().format_help().split())
    assert "--config checkpoints/conv_binarized/config.json" in help_text
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "conv_binarized" / "config.json"
    args = train.build_parser().parse_args(["--config", str(shipped), "--out", "runs/again"])
    config = train.config_from_args(args)
    stored = train.TrainConfig.from_dict(json.loads(shipped.read_text()))
    assert config == dataclasses.replace(stored, out="runs/again")
    assert (config.encoder_dense_layers, config.lr_warmup_epochs, config.epochs) == (2, 1.0, 150)


def test_read_log_returns_the_history_as_typed_columns(tmp_path):
    history = train.Trainer(tiny_config(tmp_path, epochs=2)).fit()
    log = train.read_log(tmp_path / "run")
    assert set(log) == set(train.Trainer.LOG_FIELDS)
    assert log["epoch"] == [1, 2] and all(type(step) is int for step in log["step"])
    assert log["val_nelbo"] == pytest.approx([row["val_nelbo"] for row in history])
    assert train.read_log(tmp_path / "run" / "log.csv") == log  # the file itself works too


def test_read_log_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training log at .*log.csv: give a run folder"):
        train.read_log(tmp_path)
    (tmp_path / "log.csv").write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="is not a training log: its header .* has no 'epoch' column"):
        train.read_log(tmp_path)
    (tmp_path / "log.csv").write_text("epoch,val_nelbo\n1,90.5\n2,oops\n")
    with pytest.raises(ValueError, match="column 'val_nelbo' holds a value that is not a number"):
        train.read_log(tmp_path / "log.csv")


def test_the_functions_chapter_4_prints_fit_the_code_column():
    import inspect
    import textwrap

    for function in (train.Trainer.train_epoch, train.Trainer.batch_loss, train.Trainer._ramp, train.Trainer.beta_at):
        source = textwrap.dedent(inspect.getsource(function))
        assert max(map(len, source.splitlines())) <= 88, function.__name__
        assert "fmt: skip" not in source, function.__name__


def _poison(trainer, image: int, times: int | None = None):
    """Make training image ``image`` turn the encoder's input into NaN (``times`` times, else always):
    a loss that goes NaN at one step, whose position in the epoch the permutation decides."""
    marker = torch.zeros(1, 28, 28)
    trainer.batches.x[image] = marker
    fired = []

    def hook(module, args):
        hit = module.training and (args[0].flatten(1).sum(1) == 0).any()
        if hit and (times is None or len(fired) < times):
            fired.append(1)
            return (args[0] * float("nan"),)

    trainer.model.encoder.register_forward_pre_hook(hook)
    order = torch.randperm(len(trainer.batches.x), generator=torch.Generator().manual_seed(trainer.config.seed))
    return int((order == image).nonzero()) // trainer.config.batch_size + 1  # the 1-based step of epoch 1


def test_nan_in_the_middle_of_a_window_is_named_exactly(tmp_path):
    trainer = train.Trainer(tiny_config(tmp_path, data="8bit", n_components=2, nan_check_every=3))
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))
    step = _poison(trainer, int(order[4 * 64 + 10]))  # in the 5th batch: checks at steps 3 and 6
    assert step == 5
    with pytest.raises(train.TrainingDivergedError, match=r"became nan at epoch 1, step 5\. Try a lower --lr"):
        trainer.fit()


def test_nan_in_the_last_steps_of_an_epoch_is_found_at_its_end(tmp_path):
    trainer = train.Trainer(tiny_config(tmp_path, data="8bit", n_components=2, nan_check_every=100))
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))
    _poison(trainer, int(order[7 * 64]))  # the 8th and last batch
    with pytest.raises(train.TrainingDivergedError, match=r"became nan at epoch 1, step 8\."):
        trainer.fit()


def test_nan_that_a_rerun_does_not_repeat_names_the_window(tmp_path):
    trainer = train.Trainer(tiny_config(tmp_path, data="8bit", n_components=2, nan_check_every=3))
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0))
    _poison(trainer, int(order[4 * 64]), times=1)  # a fault that happens once (as a flaky kernel might)
    with pytest.raises(train.TrainingDivergedError, match=r"at one of steps 4 to 6, but re-running.*cannot be named"):
        trainer.fit()


def test_without_nan_the_guard_reads_the_flag_every_n_steps(tmp_path, monkeypatch):
    reads = []
    original = train.DivergenceGuard.check
    monkeypatch.setattr(train.DivergenceGuard, "check", lambda self: reads.append(self.trainer.step) or original(self))
    train.Trainer(tiny_config(tmp_path, epochs=2, nan_check_every=3)).fit()  # 8 steps an epoch
    assert reads == [3, 6, 8, 11, 14, 16]


def test_speed_options_are_off_by_default_and_old_configs_mean_what_they_meant():
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "conv_binarized" / "config.json"
    stored = json.loads(shipped.read_text())
    config = train.TrainConfig.from_dict(stored)
    assert not {"compile", "precision", "channels_last", "drop_last", "nan_check_every"} & set(stored)
    assert (config.compile, config.precision, config.channels_last, config.drop_last) == ("off", "fp32", False, False)

# ------------------------------------------------------------- learned priors and latent hierarchies (Chapter 8)


@pytest.mark.parametrize("extra", [{"prior": "vamp", "prior_components": 7, "free_bits": 0.5},
                                   {"model": "hvae", "latent_dims": (4, 3), "free_bits": 1.0}],
                         ids=["vamp", "hvae"])  # fmt: skip
def test_new_models_train_and_resume_exactly(tmp_path, extra):
    straight = train.Trainer(tiny_config(tmp_path / "straight", **extra))
    history = straight.fit()
    assert history[-1]["val_nelbo"] < history[0]["val_nelbo"]
    interrupted = train.Trainer(tiny_config(tmp_path / "resumed", **extra))
    interrupted.fit(stop_after=2)
    resumed = train.Trainer(tiny_config(tmp_path / "resumed", **extra), resume=tmp_path / "resumed" / "run" / "last.pt")
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_warm_start_takes_the_shared_weights_and_pseudo_inputs_start_at_training_images(tmp_path):
    base = train.Trainer(tiny_config(tmp_path / "base", epochs=1))
    base.fit()
    checkpoint = str(tmp_path / "base" / "run" / "best.pt")
    for extra in ({"prior": "vamp", "prior_components": 5}, {"model": "hvae", "latent_dims": (4, 2)}):
        warm = train.Trainer(tiny_config(tmp_path / "warm", init_from=checkpoint, **extra)).model
        for name, value in base.model.state_dict().items():
            assert torch.equal(warm.state_dict()[name], value), name
    pseudo = torch.sigmoid(train.Trainer(tiny_config(tmp_path / "v", prior="vamp", prior_components=5)).model.pseudo_inputs)
    train_images = train.data.to_tensor(train.data.mnist_splits(seed=0)["train"].images[:512])
    for image in pseudo:  # each one is (0.01 + 0.98 x) for a training image x
        assert ((train_images - (image - 0.01) / 0.98).abs().flatten(1).amax(1) < 1e-5).any()
    other = tiny_config(tmp_path / "fc", model="fc", init_from=checkpoint)
    with pytest.raises(train.CheckpointError, match="does not fit into a FCVAE"):
        train.Trainer(other)


@pytest.mark.parametrize(
    "values, match",
    [({"compile": "yes"}, "compile must be one of off, on, graphs"), ({"precision": "fp16"}, "precision must be one"),
     ({"channels_last": 1}, "channels_last must be true or false"), ({"nan_check_every": 0}, "nan_check_every")],
)  # fmt: skip
def test_bad_speed_options(values, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values)


@pytest.mark.parametrize(
    "values, match",
    [({"prior": "flow"}, "prior must be one of standard, vamp, mog"), ({"model": "fc", "prior": "vamp"}, "ConvVAE option"),
     ({"latent_dims": [8]}, "latent_dims must be two or more"), ({"latent_dims": [8, 0]}, "latent_dims must be two"),
     ({"free_bits": -1}, "free_bits must be"), ({"prior_components": 0}, "prior_components must be a positive int")],
)  # fmt: skip
def test_bad_new_config_values(values, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values)


def test_cuda_graphs_need_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="compile 'graphs' captures CUDA graphs and needs a CUDA device.*--compile on"):
        train.Trainer(tiny_config(tmp_path, compile="graphs", device="cpu"))


def test_bf16_trains_like_fp32_with_float32_sums(tmp_path):
    runs = {p: train.Trainer(tiny_config(tmp_path / p, epochs=4, lr=3e-3, precision=p)) for p in ("fp32", "bf16")}
    x = runs["bf16"].batches.x[:64].bernoulli(generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", torch.bfloat16):  # the networks compute in bf16 and hand back float32
        assert runs["bf16"].model.encoder(x).dtype == torch.float32
        assert runs["fp32"].model.encoder(x).dtype == torch.bfloat16
    history = {p: trainer.fit() for p, trainer in runs.items()}
    assert history["bf16"][-1]["val_nelbo"] < history["bf16"][0]["val_nelbo"] - 20
    assert history["bf16"][-1]["val_nelbo"] == pytest.approx(history["fp32"][-1]["val_nelbo"], abs=1)
    assert json.loads((tmp_path / "bf16" / "run" / "config.json").read_text())["precision"] == "bf16"


def test_channels_last_and_drop_last(tmp_path):
    plain = train.Trainer(tiny_config(tmp_path / "a", epochs=1, train_subset=500)).fit()
    nhwc = train.Trainer(tiny_config(tmp_path / "b", epochs=1, train_subset=500, channels_last=True)).fit()
    assert nhwc[0]["val_nelbo"] == pytest.approx(plain[0]["val_nelbo"], rel=1e-4)
    dropped = train.Trainer(tiny_config(tmp_path / "c", epochs=1, train_subset=500, drop_last=True))
    assert len(dropped.batches) == 500 // 64 and {len(x) for x in dropped.batches} == {64}
    assert dropped.fit()[0]["step"] == 7 and plain[0]["step"] == 8


def test_compiled_training_matches_eager(tmp_path):
    """torch.compile on the CPU (inductor): the same run to float rounding, resumable in eager mode."""
    settings = {"epochs": 2, "train_subset": 256, "kl_warmup_epochs": 1.5}
    eager = train.Trainer(tiny_config(tmp_path / "eager", **settings)).fit()
    compiled = train.Trainer(tiny_config(tmp_path / "compiled", compile="on", **settings))
    history = compiled.fit(stop_after=1)
    assert history[0]["train_nelbo"] == pytest.approx(eager[0]["train_nelbo"], rel=1e-3)
    assert history[0]["val_nelbo"] == pytest.approx(eager[0]["val_nelbo"], rel=1e-3)
    resumed = train.Trainer(tiny_config(tmp_path / "compiled", **settings), resume=tmp_path / "compiled" / "run" / "last.pt")
    assert resumed.fit()[1]["val_nelbo"] == pytest.approx(eager[1]["val_nelbo"], rel=1e-3)  # compile may change


def test_precision_may_not_change_on_resume(tmp_path):
    train.Trainer(tiny_config(tmp_path, epochs=1)).fit()
    with pytest.raises(train.CheckpointError, match="different config.*precision"):
        train.Trainer(tiny_config(tmp_path, epochs=2, precision="bf16"), resume=tmp_path / "run" / "last.pt")

def test_cli_flags_for_the_new_models(tmp_path):
    help_text = _cli("--help").stdout
    for flag in ("--prior", "--prior-components", "--latent-dims", "--free-bits", "--init-from"):
        assert flag in help_text
    flags = ["--model", "hvae", "--latent-dims", "4", "2", "--channels", "4", "8", "--hidden-dim", "16", "--free-bits",
             "0.5", "--train-subset", "256", "--val-subset", "100", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "h")]  # fmt: skip
    result = _cli(*flags)
    assert result.returncode == 0, result.stderr
    assert "HierarchicalVAE" in result.stdout
    stored = json.loads((tmp_path / "h" / "config.json").read_text())
    assert stored["latent_dims"] == [4, 2] and stored["free_bits"] == 0.5
