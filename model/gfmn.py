"""GFMN (Santos et al. 2019): a generator trained without an adversary, by feature moment matching.

G matches the per-layer means and diagonal variances of a fixed network's activations on real and
generated images. The paper's networks are ImageNet-pretrained; offline we use what the project has:
a trained EBM discriminator's residual blocks (an AFV run) or a BiGAN/BigBiGAN encoder's. With small
batches the mean difference is too noisy to follow, so it is tracked by an ADAM moving average (AMA):
a vector v per layer, trained with Adam to regress the mini-batch difference, and G follows v.

Two uses beyond training a sampler:
* as the generator that estimates an AFV model's Fisher information (a gfmn run on AFV features
  loads as that AFV model with GFMN's samples behind its Fisher statistics), and
* as a set distance, `MomentEmbedder.set_distance` (from images) and `.set_distance_of` (from vectors
  already embedded, as the HTTP service has them): √(Σ_l ‖μ_A − μ_B‖² + ‖σ²_A − σ²_B‖²).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from model.checkpoint import find_checkpoint, load_state, read_checkpoint, state_hash
from model.data import uint8_to_model
from model.embedder import Embedder, SetStats, config_hash, named_layout
from model.extract import AFVExtractor, load_or_estimate_stats
from model.nets import Discriminator, Generator, fold_spectral_norm, sum_tensors
from model.presets import Preset, preset_from_dict
from model.registry import checkpoint_method, get_method
from model.trainer import BaseTrainer, TrainConfig, update_ema

Moments = list[tuple[torch.Tensor, torch.Tensor]]


class FeatureNet(nn.Module):
    """A frozen trunk of residual blocks → the ReLU activations after each block, flattened per image."""

    def __init__(self, blocks: nn.Sequential):
        super().__init__()
        self.blocks = blocks
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], x
        for block in self.blocks:
            h = block(h)
            out.append(F.relu(h).flatten(1))
        return out


def feature_source(run: str | Path) -> dict:
    """The fixed network a run offers as features: {method, preset, state, sha256} (any method's run)."""
    path = find_checkpoint(run)
    return checkpoint_features(read_checkpoint(path), path)


def checkpoint_features(ckpt: dict, path: Path) -> dict:
    """The feature-source record of a checkpoint, as its method (`Method.features`) defines it."""
    method = checkpoint_method(ckpt, path)
    if method.features is None:
        raise ValueError(f"{path}: a '{method.name}' run has no feature network")
    return method.features(ckpt, path)


def feature_record(ckpt: dict, path: Path, state: dict) -> dict:
    """The record of a checkpoint's own network with weights `state` (afv: D; bigan/bigbigan: E)."""
    method, preset = checkpoint_method(ckpt, path), preset_from_dict(ckpt["preset"])
    net = method.build_feature_network(preset)
    load_state(net, state, "feature network", preset, path)
    return {"method": method.name, "preset": ckpt["preset"], "state": state, "sha256": state_hash(net)}


def afv_features(ckpt: dict, path: Path) -> dict:
    """An afv checkpoint's features: its discriminator D."""
    return feature_record(ckpt, path, ckpt["D"])


def encoder_features(ckpt: dict, path: Path) -> dict:
    """A bigan/bigbigan checkpoint's features: its (EMA) encoder E."""
    return feature_record(ckpt, path, ckpt["E_ema"] if "E_ema" in ckpt else ckpt["E"])


def own_features(ckpt: dict, path: Path) -> dict:
    """A gfmn checkpoint's features: the record of the network it was trained on."""
    return ckpt["features"]


def source_network(source: dict) -> nn.Module:
    """The whole network of a `feature_source` record (D with spectral norm, or E), weights loaded."""
    net = get_method(source["method"]).build_feature_network(preset_from_dict(source["preset"]))
    net.load_state_dict(source["state"])
    return net.eval()


def source_discriminator(source: dict) -> Discriminator:
    """The discriminator D of an afv `feature_source` record (spectral norm unfolded)."""
    d = source_network(source)
    assert isinstance(d, Discriminator), f"a '{source['method']}' feature source has no discriminator"
    return d


def feature_net(source: dict) -> FeatureNet:
    """Rebuild the frozen feature trunk of a `feature_source` record."""
    net = source_network(source)
    if isinstance(net, Discriminator):
        net = fold_spectral_norm(net)
    blocks = net.blocks
    assert isinstance(blocks, nn.Sequential)  # every feature network (D, E) keeps its trunk as .blocks
    return FeatureNet(blocks)


def moments(feats: list[torch.Tensor]) -> Moments:
    """Per-layer mean and (biased) diagonal variance over the batch."""
    return [(f.mean(0), f.var(0, unbiased=False)) for f in feats]


def moment_loss(a: Moments, b: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_l ‖μ_a − μ_b‖², Σ_l ‖σ²_a − σ²_b‖²): GFMN's loss, without the moving average."""
    mean = sum_tensors((ma - mb).pow(2).sum() for (ma, _), (mb, _) in zip(a, b))
    var = sum_tensors((va - vb).pow(2).sum() for (_, va), (_, vb) in zip(a, b))
    return mean, var


class AdamMovingAverage(nn.Module):
    """v_l per layer, fitted by Adam to the mini-batch mean differences Δ_l (minimising ½‖v_l − Δ_l‖²)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.v = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in dims])

    def loss(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * (v - d.detach()).pow(2).sum() for v, d in zip(self.v, deltas))


@torch.no_grad()
def set_moments(net: FeatureNet, x_uint8: torch.Tensor, batch: int = 128) -> Moments:
    """Per-layer mean and variance of a whole image set, streamed in float64."""
    device = next(net.parameters()).device
    s1: list[torch.Tensor] | None = None
    s2: list[torch.Tensor] | None = None
    for i in range(0, x_uint8.shape[0], batch):
        feats = [f.double() for f in net(uint8_to_model(x_uint8[i : i + batch].to(device)))]
        b1, b2 = [f.sum(0) for f in feats], [f.pow(2).sum(0) for f in feats]
        s1 = b1 if s1 is None else [a + b for a, b in zip(s1, b1)]
        s2 = b2 if s2 is None else [a + b for a, b in zip(s2, b2)]
    if s1 is None or s2 is None:
        raise ValueError("set_moments needs at least one image")
    n = x_uint8.shape[0]
    return [(m / n, (q / n - (m / n).pow(2)).clamp_min(0)) for m, q in zip(s1, s2)]


def set_distance(net: FeatureNet, xa: torch.Tensor, xb: torch.Tensor) -> float:
    """√ of the moment-matching loss between two image sets: GFMN's loss as a set distance."""
    mean, var = moment_loss(set_moments(net, xa), set_moments(net, xb))
    return float(mean + var) ** 0.5


class GFMNTrainer(BaseTrainer):
    """G trained to match the feature moments of `--features RUN_DIR` on real images (no discriminator)."""

    method = "gfmn"
    fields = ["loss_moments", "loss_mean", "loss_var", "moment_val_gen", "moment_train_gen"]
    default_lr_g = 1e-4
    default_betas = (0.5, 0.999)  # the GFMN paper's Adam

    def __init__(self, cfg: TrainConfig, preset: Preset, images: torch.Tensor, device: torch.device):
        super().__init__(cfg, preset, images, device)
        if not cfg.features:
            raise ValueError(
                "--method gfmn needs --features RUN_DIR: a trained afv, bigan or bigbigan run "
                "whose network supplies the features to match"
            )
        self.source = feature_source(cfg.features)
        res = preset_from_dict(self.source["preset"]).resolution
        if res != preset.resolution:
            raise ValueError(
                f"the feature network works at {res} px but preset '{preset.name}' "
                f"generates {preset.resolution} px images"
            )
        self.features = feature_net(self.source).to(device)
        self.g = Generator(preset).to(device)
        self.g_ema = copy.deepcopy(self.g).eval()
        dims = [f.shape[1] for f in self.features(torch.zeros(1, 3, res, res, device=device))]
        self.ama = AdamMovingAverage(dims).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=self.lr_g, betas=self.betas)
        self.opt_ama = torch.optim.Adam(self.ama.parameters(), lr=cfg.ama_lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.g, "G_ema": self.g_ema, "AMA": self.ama}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "AMA": self.opt_ama}

    def train_step(self) -> dict[str, float]:
        x, z = self.real_batch(), self.latents()
        with torch.no_grad():
            real = moments(self.features(x))
        fake = moments(self.features(self.g(z)))
        deltas = [mr - mf for (mr, _), (mf, _) in zip(real, fake)]
        self.opt_ama.zero_grad(set_to_none=True)
        self.ama.loss(deltas).backward()
        self.opt_ama.step()
        # ∇ of −v·μ_fake is −v: the gradient of ½‖μ_real − μ_fake‖² with Δ replaced by its average v
        follow = sum(-(v.detach() * mf).sum() for v, (mf, _) in zip(self.ama.v, fake))
        var = sum(0.5 * (vr - vf).pow(2).sum() for (_, vr), (_, vf) in zip(real, fake))
        self.opt_g.zero_grad(set_to_none=True)
        (follow + var).backward()
        self.opt_g.step()
        update_ema(self.g_ema, self.g, self.cfg.ema)
        self.step += 1
        with torch.no_grad():
            lm, lv = moment_loss(real, fake)
        return {"loss_moments": float(lm + lv), "loss_mean": float(lm), "loss_var": float(lv)}

    @torch.no_grad()
    def sample_grid(self, n: int = 64) -> torch.Tensor:
        return self.g_ema(self.fixed_latents(n))

    @torch.no_grad()
    def _generated(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.preset.nz, generator=torch.Generator().manual_seed(self.cfg.seed + 8))
        x = torch.cat([self.g_ema(z[i : i + 128].to(self.device)) for i in range(0, n, 128)])
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def monitor(self) -> dict[str, float]:
        n = min(self.cfg.monitor_samples, self.val.shape[0])
        gen = self._generated(n)
        return {
            "moment_val_gen": set_distance(self.features, self.val[:n], gen) ** 2,
            "moment_train_gen": set_distance(self.features, self.train[:n], gen) ** 2,
        }

    def export(self) -> dict:
        return {"G_ema": self.g_ema.state_dict(), "features": self.source}

    def finish(self, out: Path) -> None:
        """On AFV features: Fisher statistics of that D under this generator (the 'better sampler' use)."""
        if self.source["method"] != "afv":
            return
        from model.extract import FISHER_FILE, save_stats
        from model.fisher import estimate_stats

        d = fold_spectral_norm(source_discriminator(self.source)).to(self.device)
        stats = estimate_stats(d, self.g_ema, self.fisher_samples, progress=False)
        save_stats(out / FISHER_FILE, stats, sampler_key(self.source["sha256"], self.g_ema))


def sampler_key(d_hash: str, g: nn.Module) -> str:
    """What Fisher statistics estimated with a GFMN sampler are pinned to: D's and G's weights."""
    return f"{d_hash}+gfmn:{state_hash(g)}"


class MomentEmbedder(Embedder):
    """Images → the fixed feature trunk's activations of every layer (the 'gfmn-moments' metric).

    For one image the moments are the activations themselves (a single image has no variance), so
    Euclidean distance of these vectors is the moment loss between one-image sets; `set_distance`
    adds the variance term for real sets.
    """

    kind = "gfmn-moments"

    def __init__(self, source: dict, *, device: torch.device, batch_size: int = 128, name: str = "unnamed"):
        preset = preset_from_dict(source["preset"])
        self.net = feature_net(source).to(device)
        r = preset.resolution
        dims = [f.shape[1] for f in self.net(torch.zeros(1, 3, r, r, device=device))]
        super().__init__(
            preset,
            device=device,
            layout=named_layout([(f"blocks.{i}", n) for i, n in enumerate(dims)]),
            normalization="none",
            batch_size=batch_size,
            name=name,
            model_hash=source["sha256"],
            stats_hash=config_hash("gfmn-moments", source["method"]),
        )

    @torch.no_grad()
    def raw_embed(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            return torch.cat(self.net(uint8_to_model(x.to(self.device))), dim=1)

    def stats_distance(self, a: SetStats, b: SetStats) -> float:
        """√(Σ_l ‖μ_A − μ_B‖² + ‖σ²_A − σ²_B‖²): GFMN's moment-matching loss between the two sets."""
        return float((a.mean - b.mean).pow(2).sum() + (a.var - b.var).pow(2).sum()) ** 0.5


MOMENTS = "moments"  # the `embedding` option that loads any run's feature trunk as a MomentEmbedder


def moment_embedder(ckpt: dict, path: Path, run: Path, device: torch.device) -> MomentEmbedder:
    """The 'gfmn-moments' metric of any run: the activations of its feature network (`Method.features`)."""
    return MomentEmbedder(checkpoint_features(ckpt, path), device=device, name=run.name)


def load_gfmn_embedder(
    ckpt: dict, path: Path, run: Path, device: torch.device, *, normalization: str | None, batch_size: int
) -> Embedder:
    """A gfmn run: on AFV features, that D's AFVs with Fisher statistics from this generator; else moments."""
    source = ckpt["features"]
    if source["method"] != "afv":
        return MomentEmbedder(source, device=device, name=run.name)
    g_preset = preset_from_dict(ckpt["preset"])
    d, g = source_discriminator(source), Generator(g_preset)
    load_state(g, ckpt["G_ema"], "generator", g_preset, path)
    g.eval()
    model_hash = state_hash(d)
    stats = load_or_estimate_stats(run, d, g, sampler_key(model_hash, g), g_preset.fisher_samples, device)
    return AFVExtractor(
        d,
        g,
        stats,
        device=device,
        normalization=normalization or "none",
        batch_size=batch_size,
        name=run.name if run.is_dir() else run.parent.name,
        model_hash=model_hash,
    )
