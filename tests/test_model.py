"""Tests of vae_utils.model: shapes, parameter counts, config round trips, batch independence, input checks."""

from __future__ import annotations

import itertools
import json
import pickle

import pytest
import torch
from torch import nn

from vae_utils.elbo import elbo
from vae_utils.model import (
    FCVAE,
    CheckpointError,
    ConvVAE,
    HierarchicalVAE,
    load_checkpoint,
    make_checkpoint,
    save_atomic,
)

MODELS = [(cls, likelihood) for cls in (ConvVAE, FCVAE) for likelihood in ("bernoulli", "logistic_mixture")]
IDS = [f"{cls.__name__}-{likelihood}" for cls, likelihood in MODELS]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(cls, likelihood, seed: int = 0, **kwargs):
    with torch.random.fork_rng():  # repeatable initial weights, global RNG state left as it was
        torch.manual_seed(seed)
        return cls(likelihood=likelihood, **kwargs)


def images(likelihood: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Random (n, 1, 28, 28) images in the form the likelihood expects: binary, or 8-bit k/255."""
    u = torch.rand(n, 1, 28, 28, generator=gen(seed))
    return (u < 0.3).float() if likelihood == "bernoulli" else (255 * u**3).round() / 255


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int) -> int:  # Conv2d and ConvTranspose2d alike
    return c_in * c_out * k * k + c_out


def test_parameter_counts():
    d, (c1, c2), h, k = 32, (32, 64), 256, 5
    shared = conv(1, c1, 4) + conv(c1, c2, 4) + linear(c2 * 49, h) + linear(h, 2 * d)  # encoder
    shared += linear(d, h) + linear(h, c2 * 49) + conv(c2, c1, 4)  # decoder up to 14x14
    assert ConvVAE().num_parameters() == shared + conv(c1, 1, 4) == 1_700_609
    for layers in (2, 3):  # each extra encoder layer is one (h -> h) Linear
        assert ConvVAE(encoder_dense_layers=layers).num_parameters() == 1_700_609 + (layers - 1) * linear(h, h)
    mixture = shared + conv(c1, c1, 4) + conv(c1, c1, 3) + conv(c1, 3 * k, 1)
    assert ConvVAE(likelihood="logistic_mixture").num_parameters() == mixture
    fc = linear(784, 400) + linear(400, 2 * 20) + linear(20, 400)
    assert FCVAE().num_parameters() == fc + linear(400, 784)
    assert FCVAE(likelihood="logistic_mixture", n_components=2).num_parameters() == fc + linear(400, 6 * 784)


@pytest.mark.parametrize("cls, likelihood", MODELS, ids=IDS)
def test_forward_shapes(cls, likelihood):
    model = make(cls, likelihood, n_components=3)
    out = model(images(likelihood, n=5), generator=gen(0))
    d = model.latent_dim
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "mu": (5, d),
        "logvar": (5, d),
        "z": (5, d),
        "params": (5, 1 if likelihood == "bernoulli" else 9, 28, 28),
    }
    assert model.likelihood == likelihood


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic_mixture"])
def test_dense_activation_is_elu_by_default_and_relu_on_request(likelihood):
    """Only the activations after the hidden dense layers change; the convolutions keep their ReLUs."""

    def after_dense(model):
        layers = [*model.encoder, *model.decoder]
        return [type(b).__name__ for a, b in itertools.pairwise(layers) if isinstance(a, nn.Linear)]

    default, relu = ConvVAE(likelihood=likelihood), ConvVAE(likelihood=likelihood, dense_activation="relu")
    assert after_dense(default) == ["ELU", "Linear", "ELU", "ELU"]  # the encoder's last Linear is its output
    assert after_dense(relu) == ["ReLU", "Linear", "ReLU", "ReLU"]
    assert not any(isinstance(m, nn.ELU) for m in relu.modules())
    assert sum(isinstance(m, nn.ELU) for m in default.modules()) == 3
    deeper = ConvVAE(likelihood=likelihood, encoder_dense_layers=2)  # one more Linear + ELU, in the encoder only
    assert after_dense(deeper) == ["ELU", "ELU", "Linear", "ELU", "ELU"]
    assert [type(m) for m in deeper.decoder] == [type(m) for m in default.decoder]
    assert default.num_parameters() == relu.num_parameters()


@pytest.mark.parametrize("cls", [ConvVAE, FCVAE])
def test_no_batchnorm(cls):
    for likelihood in ("bernoulli", "logistic_mixture"):
        modules = list(cls(likelihood=likelihood).modules())
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
        assert not any("Norm" in type(m).__name__ for m in modules)


@pytest.mark.parametrize("cls, likelihood", MODELS, ids=IDS)
def test_config_round_trip(cls, likelihood):
    kwargs = {"latent_dim": 7, "hidden_dim": 33, "n_components": 2}
    if cls is ConvVAE:
        kwargs |= {"channels": (8, 16), "dense_activation": "relu", "encoder_dense_layers": 3}
    model = make(cls, likelihood, **kwargs)
    assert model.config == {**kwargs, "likelihood": likelihood}
    x = images(likelihood)
    for config in (model.config, json.loads(json.dumps(model.config))):  # as a trainer would store it
        rebuilt = type(model)(**config)
        rebuilt.load_state_dict(model.state_dict())
        assert rebuilt.config == model.config
        for a, b in zip(model(x, generator=gen(1)).values(), rebuilt(x, generator=gen(1)).values(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cls, likelihood", MODELS, ids=IDS)
def test_sample_and_reconstruct(cls, likelihood):
    model = make(cls, likelihood)
    for mean in (False, True):
        x = model.sample(6, generator=gen(0), mean=mean)
        assert x.shape == (6, 1, 28, 28) and (x >= 0).all() and (x <= 1).all() and not x.requires_grad
        assert torch.equal(x, model.sample(6, generator=gen(0), mean=mean))  # the generator decides everything
    x = model.sample(6, generator=gen(0))
    if likelihood == "bernoulli":
        assert ((x == 0) | (x == 1)).all()
    else:
        assert ((x * 255 - (x * 255).round()).abs() < 1e-4).all()
    reconstruction = model.reconstruct(images(likelihood))
    assert reconstruction.shape == (4, 1, 28, 28) and (reconstruction >= 0).all() and (reconstruction <= 1).all()
    assert torch.equal(reconstruction, model.reconstruct(images(likelihood)))  # deterministic


@pytest.mark.parametrize("cls, likelihood", MODELS, ids=IDS)
def test_batch_independence(cls, likelihood):
    model = make(cls, likelihood)
    x = images(likelihood, n=8)
    mu, logvar = model.encode(x)
    params = model.decode(mu)
    for i in (0, 5):
        mu_i, logvar_i = model.encode(x[i : i + 1])
        torch.testing.assert_close(mu_i, mu[i : i + 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logvar_i, logvar[i : i + 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.decode(mu[i : i + 1]), params[i : i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, likelihood", MODELS, ids=IDS)
def test_a_few_optimizer_steps_lower_the_loss(cls, likelihood):
    model = make(cls, likelihood)
    x = images(likelihood, n=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = gen(0)

    def loss(generator):
        return elbo(model, x, generator=generator)["loss"].mean()

    before = loss(gen(1)).item()
    for _ in range(15):
        optimizer.zero_grad()
        loss(generator).backward()
        optimizer.step()
    after = loss(gen(1)).item()
    assert after < 0.95 * before, (before, after)


BAD_X = [
    (
        torch.zeros(28, 28, dtype=torch.uint8),
        TypeError,
        r"tensor of shape \(B, 1, 28, 28\) in \[0, 1\]; got torch.uint8 of shape \(28, 28\).*to_tensor",
    ),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), TypeError, "got torch.uint8"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.float64), TypeError, "expected a torch.float32 tensor.*got torch.float64"),
    (torch.zeros(2, 28, 28), ValueError, r"got torch.float32 of shape \(2, 28, 28\)"),
    (torch.zeros(2, 1, 32, 32), ValueError, r"got torch.float32 of shape \(2, 1, 32, 32\)"),
    (torch.full((2, 1, 28, 28), 255.0), ValueError, r"in \[0, 1\]; got values from 255 to 255"),
    (torch.full((2, 1, 28, 28), -0.5), ValueError, r"in \[0, 1\]; got values from -0.5"),
    (torch.full((2, 1, 28, 28), float("nan")), ValueError, r"in \[0, 1\]"),
    ([[0.0]], TypeError, "got list"),
]


@pytest.mark.parametrize("cls", [ConvVAE, FCVAE])
@pytest.mark.parametrize("x, error, match", BAD_X)
def test_bad_x(cls, x, error, match):
    model = cls()
    for call in (model.encode, model, model.reconstruct):
        with pytest.raises(error, match=match):
            call(x)


@pytest.mark.parametrize("cls", [ConvVAE, FCVAE])
def test_bad_z_and_n(cls):
    model = cls(latent_dim=8)
    with pytest.raises(ValueError, match=r"z must be a torch.float32 tensor of shape \(B, 8\), got shape \(3, 7\)"):
        model.decode(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"shape \(B, 8\), got shape \(8,\)"):
        model.decode(torch.zeros(8))
    with pytest.raises(TypeError, match="z must be a torch.float32 tensor .* got torch.int64"):
        model.decode(torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        model.sample(0)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ConvVAE, {"latent_dim": 0}, "latent_dim must be a positive int, got 0"),
        (FCVAE, {"latent_dim": 2.5}, "latent_dim must be a positive int, got 2.5"),
        (FCVAE, {"hidden_dim": -1}, "hidden_dim must be a positive int, got -1"),
        (ConvVAE, {"hidden_dim": True}, "hidden_dim must be a positive int, got True"),
        (ConvVAE, {"channels": (32,)}, r"channels must be two ints .* got \(32,\)"),
        (ConvVAE, {"channels": "ab"}, "channels must be two ints"),
        (ConvVAE, {"channels": (32, 0)}, r"channels\[1\] must be a positive int, got 0"),
        (ConvVAE, {"dense_activation": "tanh"}, "dense_activation must be one of elu, relu, got 'tanh'"),
        (ConvVAE, {"encoder_dense_layers": 0}, "encoder_dense_layers must be a positive int, got 0"),
        (ConvVAE, {"likelihood": "gaussian"}, "unknown likelihood 'gaussian'; choose one of bernoulli, logistic_mix"),
        (FCVAE, {"likelihood": "Bernoulli"}, "choose one of bernoulli, logistic_mixture"),
        (FCVAE, {"likelihood": "logistic_mixture", "n_components": 0}, "n_components must be a positive int, got 0"),
    ],
)
def test_bad_constructor_args(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# --------------------------------------------------------------------------------------------- checkpoints


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # like a kill in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


@pytest.mark.parametrize("model", [ConvVAE(latent_dim=3, channels=(2, 4), hidden_dim=8), FCVAE(latent_dim=3, hidden_dim=8)])
def test_checkpoint_round_trip(tmp_path, model):
    save_atomic(make_checkpoint(model), tmp_path / "m.pt")
    loaded, checkpoint = load_checkpoint(tmp_path / "m.pt")
    assert type(loaded) is type(model) and not loaded.training
    x = torch.rand(2, 1, 28, 28).round()
    torch.testing.assert_close(loaded.encode(x), model.encode(x), rtol=0, atol=0)
    assert checkpoint["versions"]["torch"] == str(torch.__version__)


class NotAllowed:
    """An arbitrary class: unpickling it could run code, so weights_only loading must refuse it."""


def _valid_checkpoint(tmp_path):
    path = tmp_path / "good.pt"
    save_atomic(make_checkpoint(ConvVAE(latent_dim=3, channels=(2, 4), hidden_dim=8)), path)
    return path, torch.load(path, weights_only=True)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refuses_files_that_are_not_checkpoints(tmp_path):
    path, checkpoint = _valid_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError, match="not a readable vae_utils checkpoint"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({**checkpoint, "extra": NotAllowed()}, unsafe)
    with pytest.raises(CheckpointError, match=r"pickled Python object \(tests?\.?\S*NotAllowed\)") as refused:
        load_checkpoint(unsafe)
    for advice in ("weights_only", "safe_globals", "allowlist", "trust"):  # no way around the safety is suggested
        assert advice not in str(refused.value)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": checkpoint["state_dict"]}, plain)
    with pytest.raises(CheckpointError, match="not a vae_utils checkpoint"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": "vae_utils.checkpoint"}))
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda c: c["model_config"].update(latent_dim=5), "do not match the stored model config"),
        (lambda c: c["state_dict"].pop("decoder.0.bias"), "do not match"),
        (lambda c: c["state_dict"].update({"decoder.0.bias": torch.zeros(99)}), "do not match"),
        (lambda c: c.update(model_class="Transformer"), "unknown model class"),
        (lambda c: c.update(version=99), "version 99"),
        (lambda c: c["model_config"].update(likelihood="gaussian"), "do not match"),
    ],
)
def test_refuses_tampered_checkpoints(tmp_path, tamper, match):
    _, checkpoint = _valid_checkpoint(tmp_path)
    tamper(checkpoint)
    torch.save(checkpoint, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "tampered.pt")


# ------------------------------------------------------------- learned priors and latent hierarchies (Chapter 8)


def small(cls=ConvVAE, **kwargs):
    return make(cls, "bernoulli", channels=(4, 8), hidden_dim=16, **kwargs)


def test_the_standard_prior_adds_nothing():
    """N(0, I) models keep their weights, config and sample stream: the shipped checkpoints stay valid."""
    plain = small(latent_dim=3)
    assert plain.prior == "standard" and "prior" not in plain.config
    assert not any("pseudo" in name or "prior" in name for name in plain.state_dict())
    eps = torch.randn((5, 3), generator=gen(0))
    torch.testing.assert_close(plain.sample_latent(5, gen(0)), eps, rtol=0, atol=0)


@pytest.mark.parametrize("prior, extra", [("vamp", {"pseudo_inputs": (6, 1, 28, 28)}),
                                          ("mog", {"prior_means": (6, 3), "prior_logvars": (6, 3), "prior_logits": (6,)})])  # fmt: skip
def test_learned_priors(prior, extra, tmp_path):
    model = small(latent_dim=3, prior=prior, prior_components=6)
    assert model.config["prior"] == prior and model.config["prior_components"] == 6
    state = model.state_dict()
    assert {name: tuple(state[name].shape) for name in extra} == extra
    log_weights, mu, logvar = model.prior_components()
    assert log_weights.shape == (6,) and mu.shape == logvar.shape == (6, 3)
    torch.testing.assert_close(log_weights.exp().sum(), torch.tensor(1.0))
    if prior == "vamp":  # the components are the encoder's posteriors of the pseudo-inputs
        torch.testing.assert_close(mu, model.encode(torch.sigmoid(model.pseudo_inputs))[0])
        images_in = torch.rand(6, 1, 28, 28, generator=gen(1))
        model.init_pseudo_inputs(images_in)
        torch.testing.assert_close(torch.sigmoid(model.pseudo_inputs), 0.01 + 0.98 * images_in)
        with pytest.raises(ValueError, match="expected 6 images"):
            model.init_pseudo_inputs(images_in[:2])
    z = model.sample_latent(4000, gen(2))
    mixture_mean = (log_weights.exp()[:, None] * mu).sum(0)
    assert (z.mean(0) - mixture_mean).abs().max() < 0.1
    save_atomic(make_checkpoint(model), tmp_path / "m.pt")
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.config == json.loads(json.dumps(model.config)) | {"channels": (4, 8)}
    torch.testing.assert_close(loaded.prior_components()[1], model.prior_components()[1])
    with pytest.raises(ValueError, match="prior must be one of"):
        small(prior="flow")
    with pytest.raises(ValueError, match="only a VampPrior has pseudo-inputs"):
        small().init_pseudo_inputs(images_in if prior == "vamp" else torch.zeros(1, 1, 28, 28))


def test_hierarchical_vae_shapes_chains_and_checkpoint(tmp_path):
    model = small(HierarchicalVAE, latent_dims=(5, 3, 2))
    assert model.latent_dims == (5, 3, 2) and model.latent_dim == 5
    assert model.config["latent_dims"] == (5, 3, 2) and "latent_dim" not in model.config
    x = images("bernoulli")
    mu, logvar = model.posterior(0, x)
    torch.testing.assert_close(mu, model.encode(x)[0])
    assert [t.shape for t in model.posterior(1, mu)] == [(4, 3)] * 2
    assert [t.shape for t in model.posterior(2, torch.zeros(4, 3))] == [(4, 2)] * 2
    assert [t.shape for t in model.conditional_prior(0, torch.zeros(4, 3))] == [(4, 5)] * 2
    assert [t.shape for t in model.conditional_prior(1, torch.zeros(4, 2))] == [(4, 3)] * 2
    assert model.sample_latent(7, gen(0)).shape == (7, 5)
    assert torch.equal(model.sample(3, gen(0)), model.sample(3, gen(0)))
    with pytest.raises(ValueError, match="level must be an int in 0..1"):
        model.conditional_prior(2, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"z_2 must be a torch.float32 tensor of shape \(B, 3\)"):
        model.posterior(2, torch.zeros(4, 5))
    for bad in ((5,), 5, "53", (5, 0)):
        with pytest.raises(ValueError, match="latent_dims"):
            small(HierarchicalVAE, latent_dims=bad)
    save_atomic(make_checkpoint(model), tmp_path / "h.pt")
    loaded, checkpoint = load_checkpoint(tmp_path / "h.pt")
    assert type(loaded) is HierarchicalVAE and checkpoint["model_class"] == "HierarchicalVAE"
    torch.testing.assert_close(loaded.conditional_prior(0, torch.ones(2, 3)), model.conditional_prior(0, torch.ones(2, 3)))
    shared = set(ConvVAE(latent_dim=5, channels=(4, 8), hidden_dim=16).state_dict())
    assert shared < set(model.state_dict())  # the ConvVAE's encoder and decoder, plus the up and down MLPs
