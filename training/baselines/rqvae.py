"""RQ-VAE semantic IDs (TIGER-style) over fixed embeddings, and DSIRM's contrastive variant.

An MLP autoencoder whose latent is quantised by L residual codebooks, trained with
reconstruction + codebook + commitment losses and a straight-through estimator. Against
codebook collapse: each level's codebook is initialised by k-means of that level's residuals,
and codes left unused for an epoch are reset to residuals drawn from the current batch.
Queries are encoded by the same encoder; their top-K SIDs come from a beam search over the
residual levels, restricted to paths that exist in the catalog.

DSIRM (`nce_weight` > 0): the same quantiser is shared by queries and items and also trained
with an in-batch InfoNCE between the quantised (straight-through) query and item latents of
relevant pairs; DSIRM weighs InfoNCE / commitment / reconstruction 1.0 / 1.0 / 0.1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.sids import Trie, trie_beam_search

log = logging.getLogger(__name__)

CONFIG_FILE = "rqvae.json"
WEIGHTS_FILE = "rqvae.safetensors"


@dataclass
class RQVAEConfig:
    in_dim: int = 384
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent: int = 32
    levels: int = 3
    codebook_size: int = 256
    beta: float = 0.25
    epochs: int = 60
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    recon_weight: float = 1.0
    commit_weight: float = 1.0
    nce_weight: float = 0.0  # > 0: DSIRM's query-bridged contrastive RQ-VAE
    temperature: float = 0.07
    pair_batch: int = 256


def dsirm_config(**kw) -> RQVAEConfig:
    """DSIRM's weights: InfoNCE 1.0, commitment 1.0, reconstruction 0.1."""
    return RQVAEConfig(**{"nce_weight": 1.0, "commit_weight": 1.0, "recon_weight": 0.1, **kw})


def _build(cfg: RQVAEConfig):
    import torch
    from torch import nn

    def mlp(dims: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class RQVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = mlp([cfg.in_dim, *cfg.hidden, cfg.latent])
            self.decoder = mlp([cfg.latent, *reversed(cfg.hidden), cfg.in_dim])
            self.codebooks = nn.ParameterList(
                nn.Parameter(torch.randn(cfg.codebook_size, cfg.latent) * 0.1)
                for _ in range(cfg.levels)
            )

        def quantise(self, z: torch.Tensor):
            """Greedy residual quantisation: (quantised z, codes (B, L), per-level residuals)."""
            residual, quantised = z, torch.zeros_like(z)
            codes, residuals = [], []
            for book in self.codebooks:
                residuals.append(residual)
                idx = torch.cdist(residual, book).argmin(dim=1)
                chosen = book[idx]
                codes.append(idx)
                quantised = quantised + chosen
                residual = residual - chosen
            return quantised, torch.stack(codes, dim=1), residuals

        def forward(self, x: torch.Tensor):
            z = self.encoder(x)
            _, codes, residuals = self.quantise(z)
            vq_loss = z.new_zeros(())
            quantised = torch.zeros_like(z)
            for level, book in enumerate(self.codebooks):
                chosen = book[codes[:, level]]
                r = residuals[level]
                vq_loss = vq_loss + ((r.detach() - chosen) ** 2).mean()
                vq_loss = vq_loss + cfg.beta * ((r - chosen.detach()) ** 2).mean()
                quantised = quantised + chosen
            z_q = z + (quantised - z).detach()  # straight-through
            recon = ((self.decoder(z_q) - x) ** 2).sum(dim=1).mean()
            return recon, vq_loss, codes, z_q

    return RQVAE()


class RQVAE:
    """Train, save, load and apply an RQ-VAE; numpy in, numpy out."""

    def __init__(self, cfg: RQVAEConfig, module=None):
        self.cfg = cfg
        if module is None:
            import torch

            # initial weights from the config's seed, not from whatever the global RNG holds
            # (they differed from process to process, and so did the trained codes)
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed)
                module = _build(cfg)
        self.module = module
        self.trie: Trie | None = None

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.cfg.codebook_size] * self.cfg.levels

    def _kmeans_init(self, x) -> None:
        """Each level's codebook := k-means centres of that level's residuals (fewer rows than
        codes: the rows themselves, repeated)."""
        import torch
        from sklearn.cluster import KMeans

        k = self.cfg.codebook_size
        with torch.no_grad():
            residual = self.module.encoder(x)
            for level, book in enumerate(self.module.codebooks):
                if len(residual) <= k:
                    labels = torch.arange(len(residual)).repeat(k // len(residual) + 1)[:k]
                    centres = residual[labels]
                    labels = labels[: len(residual)]
                else:
                    km = KMeans(k, n_init=1, max_iter=50, random_state=self.cfg.seed + level)
                    km.fit(residual.numpy())
                    centres = torch.from_numpy(km.cluster_centers_.astype(np.float32))
                    labels = torch.from_numpy(km.labels_.astype(np.int64))
                book.copy_(centres)
                residual = residual - centres[labels]

    def fit(
        self,
        x_np: np.ndarray,
        queries: np.ndarray | None = None,
        pairs: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Train on item vectors x; with `nce_weight` > 0 also on (query row, item row) pairs
        of relevant query vectors `queries`."""
        import torch
        from tqdm.auto import tqdm

        cfg = self.cfg
        contrastive = cfg.nce_weight > 0
        if contrastive and (queries is None or pairs is None or len(pairs) == 0):
            raise ValueError("the contrastive RQ-VAE needs query vectors and relevant pairs")
        torch.manual_seed(self.cfg.seed)
        x = torch.from_numpy(np.asarray(x_np, dtype=np.float32))
        qx = torch.from_numpy(np.asarray(queries, dtype=np.float32)) if contrastive else None
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self._kmeans_init(x[torch.randperm(len(x), generator=gen)[:20000]])
        opt = torch.optim.AdamW(self.module.parameters(), lr=self.cfg.lr)
        resets = 0
        bar = tqdm(range(self.cfg.epochs), desc="rqvae", unit="epoch")
        for _ in bar:
            used = torch.zeros(self.cfg.levels, self.cfg.codebook_size, dtype=torch.bool)
            perm = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), self.cfg.batch_size):
                batch = x[perm[start : start + self.cfg.batch_size]]
                recon, vq, codes, _ = self.module(batch)
                loss = cfg.recon_weight * recon + cfg.commit_weight * vq
                if contrastive:
                    nce, vq_q = self._pair_nce(qx, x, pairs, gen)
                    loss = loss + cfg.nce_weight * nce + cfg.commit_weight * vq_q
                opt.zero_grad()
                loss.backward()
                opt.step()
                for level in range(self.cfg.levels):
                    used[level, codes[:, level]] = True
            resets += self._reset_dead(used, x, gen)
            bar.set_postfix(recon=f"{recon.item():.4f}", vq=f"{vq.item():.4f}", resets=resets)
        return {
            **({"nce_loss": float(nce.item())} if contrastive else {}),
            "recon_loss": float(recon.item()),
            "vq_loss": float(vq.item()),
            "dead_code_resets": float(resets),
        }

    def _pair_nce(self, qx, x, pairs: np.ndarray, gen):
        """In-batch InfoNCE between quantised latents of sampled relevant pairs (distinct items
        per batch); returns (loss, the queries' commitment loss)."""
        import torch
        from torch.nn import functional as F

        pick = torch.randint(len(pairs), (self.cfg.pair_batch,), generator=gen).numpy()
        _, first = np.unique(pairs[pick, 1], return_index=True)  # one pair per item
        chosen = pairs[pick[first]]
        _, vq_q, _, zq_q = self.module(qx[chosen[:, 0]])
        _, _, _, zq_d = self.module(x[chosen[:, 1]])
        logits = F.normalize(zq_q, dim=-1) @ F.normalize(zq_d, dim=-1).T / self.cfg.temperature
        target = torch.arange(len(chosen))
        nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return nce, vq_q

    def _reset_dead(self, used, x, gen) -> int:
        """Move codes unused during the epoch onto residuals of a random batch at that level."""
        import torch

        total = 0
        with torch.no_grad():
            sample = x[torch.randperm(len(x), generator=gen)[: self.cfg.batch_size]]
            _, _, residuals = self.module.quantise(self.module.encoder(sample))
            for level, book in enumerate(self.module.codebooks):
                dead = (~used[level]).nonzero().flatten()
                if len(dead) == 0:
                    continue
                pick = torch.randint(len(sample), (len(dead),), generator=gen)
                book[dead] = residuals[level][pick]
                total += len(dead)
        return total

    def latent(self, x_np: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module.encoder(torch.from_numpy(np.asarray(x_np, np.float32))).numpy()

    def codes(self, x_np: np.ndarray) -> np.ndarray:
        """(N, L) greedy residual codes; also builds the trie of existing paths."""
        import torch

        with torch.no_grad():
            _, codes, _ = self.module.quantise(torch.from_numpy(self.latent(x_np)))
        return codes.numpy().astype(np.int64)

    def query_paths(self, q: np.ndarray, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`beam` catalog paths for one query vector; score = -sum of squared residuals."""
        if self.trie is None:
            raise RuntimeError("set .trie (the catalog's codes) before asking for query paths")
        books = [b.detach().numpy() for b in self.module.codebooks]
        z = self.latent(q[None])[0]

        def expand(level: int, prefix: tuple[int, ...], residual, kids: np.ndarray):
            diff = residual[None, :] - books[level][kids]
            return -np.einsum("ij,ij->i", diff, diff), list(diff)

        return trie_beam_search(self.trie, beam, expand, initial_state=z)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))
        state = {k: v.contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> RQVAE:
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; not an RQ-VAE checkpoint")
        cfg = RQVAEConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.module.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        model.module.eval()
        return model
