"""Every knob of the semantic indexer and its training, with the defaults that are reported."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class IndexerConfig:
    # --- model
    levels: int = 3  # semantic levels; a disambiguation level is added on top at assignment
    codebook_size: int = 256
    trainable_layers: int = 2  # top MiniLM layers fine-tuned; the lower ones are frozen+cached
    # the encoder's starting weights: "minilm" (all-MiniLM-L6-v2 as shipped), "dense-ft"
    # (MiniLM first fine-tuned on the training pairs as the dense-ft baseline is, cached;
    # its lower layers are then the frozen ones) or "auto": dense-ft when training on
    # judgments, minilm in the self-supervised mode (no pairs). The checkpoint records which.
    # docs/indexer-experiments.md § Starting from dense-ft
    encoder_init: str = "auto"
    # 1 serves faster than 2 with the same retrieval quality (docs/indexer.md § Model)
    decoder_layers: int = 1
    decoder_heads: int = 6
    decoder_ff: int = 1536
    dropout: float = 0.1
    max_query_tokens: int = 32
    max_item_tokens: int = 48
    code_temperature: float = 0.1  # softmax temperature of code logits (cosine to codebook)
    # the KL and commitment terms' code temperature (None: code_temperature); the balancing
    # term and inference keep code_temperature (docs/indexer-experiments.md § Ablations under
    # earlier defaults)
    code_loss_temperature: float | None = None
    # the decoder's first input: "pooled" = masked mean of the encoder states (MiniLM's own
    # sentence embedding, so step 1 starts from a good dense representation) or "learned" = one
    # learned vector (checkpoints written before this option existed)
    bos_input: str = "pooled"
    # --- losses (GSID 2.2)
    temperature: float = 0.05  # InfoNCE
    kl_weight: float = 1.0
    # InfoNCE between the pooled encoder outputs of queries and items (the indexer's dense
    # representation, `sidserve evaluate --method indexer-dense`), at every level and phase,
    # so the code losses on the decoder do not wear it down (0 turns it off)
    encoder_nce_weight: float = 1.0
    commit_weight: float = 1.0
    # Sinkhorn-balanced code targets at the level being trained (0 turns them off): items of
    # a batch are pushed to spread over the codebook instead of sharing a few codes
    balance_weight: float = 1.0
    balance_epsilon: float = 0.05  # Sinkhorn temperature on cosine similarities
    balance_iters: int = 3
    # self-supervised mode only; supervised training ignores them (docs/indexer.md
    # § Self-supervised mode): the contrastive second view of an item is one of its
    # `neighbours` nearest catalog items (cosine of the untrained encoder's pooled outputs,
    # among items sharing the fixed prefix; 0: a dropout view of the item itself, LMIndexer);
    # `view_kl_weight` × the code KL between the two views at the level being trained
    # (SCAN's neighbour consistency; 3.0 collapsed level 1 on the toys)
    neighbours: int = 20
    view_kl_weight: float = 1.0
    # --- data and sampling
    positive_threshold: float = 2.5  # a judged pair at or above this grade is a positive
    # judged hard negatives: per sampled query, up to this many items graded below
    # `negative_threshold` for it join the batch as extra in-batch negatives (0 turns it off);
    # `judged_negatives_scope` "all": in both InfoNCE terms and the code terms; "dense": in the
    # encoder InfoNCE alone (the dense representation), the decoder and codes never see them.
    # Below 2.0, not 2.5: the 2.0-2.33 pairs are near relatives of the positives, and pushing
    # them away cost level-1 code agreement (docs/indexer-experiments.md § Judged negatives)
    judged_negatives: int = 1
    negative_threshold: float = 2.0
    judged_negatives_scope: str = "all"
    queries_per_item: int = 2  # multi-query sampling
    hard_negatives: bool = True  # from level 2 on, batches of groups sharing a prefix
    group_size: int = 8  # items per shared-prefix group in a hard-negative batch
    batch_items: int = 128  # distinct items per batch (64 until 2026-12-05)
    # --- schedule
    warmup_epochs: float = 0.5  # contrastive-only before each level's codebook is made
    epochs_per_level: list[float] = field(default_factory=lambda: [2.0, 1.5, 1.5])
    # the encoder layers' rate; None: 2e-5 from the dense-ft start (already a good dense model,
    # a lower rate keeps more of it), 5e-5 from MiniLM as shipped. The checkpoint records which.
    # docs/indexer-experiments.md § A lower encoder rate from the dense-ft start
    lr: float | None = None
    # "linear": the encoder's lr falls linearly from `lr` to 0 over the whole run (every
    # warm-up and main phase, by epochs); "constant" keeps it at `lr`. The decoder's is constant.
    lr_schedule: str = "constant"
    head_lr: float = 5e-4  # decoder
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.03  # EMA count below which a code is re-seeded
    codebook_init: str = "kmeans"  # "kmeans" (LMIndexer) or "random" (items' reps)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError("levels must be >= 1 and codebook_size >= 2")
        if len(self.epochs_per_level) != self.levels:
            raise ValueError(
                f"epochs_per_level has {len(self.epochs_per_level)} entries, "
                f"one per level is needed ({self.levels})"
            )
        if not 0 <= self.trainable_layers <= 6:
            raise ValueError("trainable_layers must be within 0..6 (MiniLM has 6)")
        if self.balance_weight < 0 or self.balance_epsilon <= 0 or self.balance_iters < 1:
            raise ValueError("balance_weight must be >= 0, balance_epsilon > 0, balance_iters >= 1")
        if self.code_loss_temperature is not None and self.code_loss_temperature <= 0:
            raise ValueError("code_loss_temperature must be > 0 (or null)")
        if self.encoder_nce_weight < 0:
            raise ValueError("encoder_nce_weight must be >= 0")
        if self.judged_negatives < 0:
            raise ValueError("judged_negatives must be >= 0")
        if self.negative_threshold > self.positive_threshold:
            raise ValueError("negative_threshold must be <= positive_threshold")
        if self.neighbours < 0 or self.view_kl_weight < 0:
            raise ValueError("neighbours and view_kl_weight must be >= 0")
        if self.judged_negatives_scope not in ("all", "dense"):
            raise ValueError("judged_negatives_scope must be 'all' or 'dense'")
        dense_only = self.judged_negatives and self.judged_negatives_scope == "dense"
        if dense_only and self.encoder_nce_weight == 0:  # the only term they would enter is off
            raise ValueError("judged_negatives_scope 'dense' needs encoder_nce_weight > 0")
        if self.encoder_init not in ("auto", "minilm", "dense-ft"):
            raise ValueError("encoder_init must be 'auto', 'minilm' or 'dense-ft'")
        if self.bos_input not in ("pooled", "learned"):
            raise ValueError("bos_input must be 'pooled' or 'learned'")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError("lr_schedule must be 'constant' or 'linear'")
        if self.codebook_init not in ("kmeans", "random"):
            raise ValueError("codebook_init must be 'kmeans' or 'random'")
        if self.lr is not None and self.lr <= 0:
            raise ValueError("lr must be > 0 (or null: the encoder start's default)")

    def resolve_start(self, self_supervised: bool) -> None:
        """Fix the "auto" encoder start and the rate that goes with it (a new run, not a resumed
        one): dense-ft with judgments, MiniLM in the self-supervised mode."""
        if self.encoder_init == "auto":
            self.encoder_init = "minilm" if self_supervised else "dense-ft"
        if self.lr is None:
            self.lr = 2e-5 if self.encoder_init == "dense-ft" else 5e-5

    @property
    def encoder_lr(self) -> float:
        if self.lr is None:
            raise ValueError("lr is unresolved: call resolve_start first")
        return self.lr

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> IndexerConfig:
        """A JSON file with any subset of the fields; unknown keys, and values of another JSON
        type than the field's default, are an error naming the file and the key."""
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: must hold a JSON object of config fields")
        defaults = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(defaults))
        if unknown:
            raise ValueError(f"{path}: unknown config key(s): {', '.join(unknown)}")
        for key, value in raw.items():
            f = defaults[key]
            default = f.default_factory() if callable(f.default_factory) else f.default
            if expected := _expected(value, default):
                raise ValueError(f"{path}: {key}: expected {expected}, got {json.dumps(value)}")
        return cls(**raw)


def _expected(value: object, default: object) -> str | None:
    """None if `value` may stand where `default` does, else what may, in JSON's words: a number
    for a number (an integer where an integer is needed), a list of numbers for a list, null or
    a number for a null default."""

    def number(x: object, integer: bool = False) -> bool:
        return isinstance(x, int if integer else (int, float)) and not isinstance(x, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if number(value, integer=True) else "an integer"
    if isinstance(default, float):
        return None if number(value) else "a number"
    if default is None:
        return None if value is None or number(value) else "a number or null"
    if isinstance(default, list):
        ok = isinstance(value, list) and all(number(x) for x in value)
        return None if ok else "a list of numbers"
    return None if isinstance(value, type(default)) else "a string"
