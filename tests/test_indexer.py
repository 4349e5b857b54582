"""The semantic indexer on a toy set: real training, real properties."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.indexer_toy import load_toy, tiny_config
from training.encoder import minilm_path
from training.indexer.checkpoint import load_checkpoint, save_checkpoint
from training.indexer.config import IndexerConfig
from training.indexer.inference import (
    codes_and_dense,
    dense_representations,
    greedy_codes,
    query_beams,
)
from training.indexer.losses import (
    code_kl,
    multi_positive_nce,
    sinkhorn_targets,
    soft_cross_entropy,
)
from training.indexer.model import SemanticIndexer
from training.indexer.sampling import PairData, make_batches, near_duplicate_key
from training.indexer.states import compute_states
from training.indexer.trainer import (
    Trainer,
    code_stats,
    encode_by_length,
    step_representations,
)
from training.sids import Trie, disambiguate


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("toy")
    cat, j = load_toy(tmp)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = SemanticIndexer(cfg)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    pairs = PairData.from_judgments(j, cfg.positive_threshold)
    items = compute_states(model, tok, cat.texts, cfg.max_item_tokens, progress=False)
    queries = compute_states(model, tok, pairs.query_texts, cfg.max_query_tokens, progress=False)
    return dict(cat=cat, model=model, tok=tok, pairs=pairs, items=items, queries=queries, tmp=tmp)


@pytest.fixture(scope="module")
def trained(toy):
    """Train level 1, record what the model says, then level 2."""
    t = Trainer(toy["model"], toy["items"], toy["queries"], toy["pairs"])
    first = t.run_epochs(0, 1.0, main=False, desc="a")
    second = t.run_epochs(0, 1.0, main=False, desc="b")
    cfg = t.cfg
    t.init_codebook(0)
    t.run_epochs(0, cfg.epochs_per_level[0], main=True, desc="l1")
    t.assign_level(0)
    level1 = t.state.codes[:, 0].copy()
    t.init_codebook(1)
    t.run_epochs(1, cfg.epochs_per_level[1], main=True, desc="l2")
    t.assign_level(1)
    return dict(trainer=t, level1=level1, first=first, second=second)


def test_contrastive_loss_decreases(trained):
    assert trained["second"]["nce"] < trained["first"]["nce"]


def test_encoder_alignment_loss_decreases_and_defines_the_dense_vectors(toy, trained):
    assert trained["second"]["enc_nce"] < trained["first"]["enc_nce"]
    model, items = toy["model"], toy["items"]
    dense = dense_representations(model, items, batch_size=7)  # several padded batches
    lower, mask = items.batch(list(range(len(items))))
    with torch.no_grad():
        memory = model.encode(lower, mask)
    m = mask.float()[..., None]
    by_hand = torch.nn.functional.normalize((memory * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(dense, by_hand, atol=1e-5)
    # the catalog pass of `evaluate` (codes and vectors together) gives the same vectors
    _, with_codes = codes_and_dense(model, items)
    np.testing.assert_array_equal(with_codes, dense_representations(model, items))
    with pytest.raises(ValueError, match="encoder_nce_weight"):
        IndexerConfig(encoder_nce_weight=-1.0)


def test_length_groups_and_length_ordered_passes_give_each_text_its_one_batch_numbers(toy, trained):
    """Training runs a batch's texts in groups of similar length, the catalog passes go in
    length order: each text must still get what one padded batch gives it, in its place."""
    model, items, codes = toy["model"], toy["items"], trained["trainer"].state.codes
    rows = np.random.default_rng(0).permutation(len(items)).tolist()
    assert len(np.unique(items.lengths(rows))) >= 4  # the groups really differ in width
    prefix = torch.from_numpy(codes[rows, :1])
    decoded = len(rows) - 3  # the last three as judged negatives: dense vector only
    model.eval()
    with torch.no_grad():
        lower, mask = items.batch(rows)
        memory = model.encode(lower, mask)
        want_reps = model.decode(memory, mask, prefix)
        want_dense = model.dense(memory, mask)
        reps, dense = encode_by_length(model, items, rows, prefix[:decoded], groups=3)
    np.testing.assert_allclose(reps.numpy(), want_reps[:decoded].numpy(), atol=1e-5)
    np.testing.assert_allclose(dense.numpy(), want_dense.numpy(), atol=1e-5)
    got = step_representations(model, items, codes[:, :1], batch_size=5, rows=rows)
    np.testing.assert_allclose(got.numpy(), want_reps.numpy(), atol=1e-5)


def test_commitment_keeps_level1_while_level2_trains(toy, trained):
    # the stored level-1 codes never move, and the model still predicts them after level 2
    t = trained["trainer"]
    assert np.array_equal(t.state.codes[:, 0], trained["level1"])
    again = greedy_codes(toy["model"], toy["items"])
    # 0.92-1.0 over seeds 0-2 and both start inputs on this 48-item toy: at most 4 items move
    assert (again[:, 0] == trained["level1"]).mean() >= 0.9


def test_sids_unique_after_disambiguation_and_deterministic(toy, trained):
    codes = greedy_codes(toy["model"], toy["items"])
    full = disambiguate(codes)
    assert len(np.unique(full, axis=0)) == len(full)
    assert np.array_equal(codes, greedy_codes(toy["model"], toy["items"]))
    # the same text always gets the same SID, wherever it stands in the catalog
    texts = [toy["cat"].texts[5], toy["cat"].texts[0], toy["cat"].texts[5]]
    st = compute_states(
        toy["model"], toy["tok"], texts, toy["model"].cfg.max_item_tokens, progress=False
    )
    c = greedy_codes(toy["model"], st)
    assert np.array_equal(c[0], c[2]) and np.array_equal(c[0], codes[5])


def test_title_as_query_shares_level1_and_uses_codes(toy, trained):
    codes = greedy_codes(toy["model"], toy["items"])
    assert len(np.unique(codes[:, 0])) >= 3  # not collapsed onto one or two codes
    st = compute_states(
        toy["model"],
        toy["tok"],
        toy["cat"].texts,
        toy["model"].cfg.max_query_tokens,
        progress=False,
    )
    beams = query_beams(toy["model"], st, Trie(codes), beam=5)
    top1 = np.stack([p[0] for p, _ in beams])
    assert (top1[:, 0] == codes[:, 0]).mean() >= 0.9
    existing = {tuple(r) for r in codes.tolist()}
    for paths, scores in beams:
        assert all(tuple(p) in existing for p in paths.tolist())
        assert np.all(np.diff(scores) <= 1e-9) and np.all(scores <= 0)


def test_checkpoint_round_trip(toy, trained, tmp_path):
    model = toy["model"]
    codes = trained["trainer"].state.codes
    save_checkpoint(tmp_path / "ck", model, toy["tok"], codes, {"base_fingerprint": "x"})
    again, _, saved_codes, doc = load_checkpoint(tmp_path / "ck")
    assert np.array_equal(saved_codes, codes) and doc["indexer"]["levels"] == 2
    assert np.array_equal(greedy_codes(again, toy["items"]), greedy_codes(model, toy["items"]))
    # a checkpoint written before a config key existed loads with what it was trained with
    older = json.loads(json.dumps(doc))
    del older["indexer"]["bos_input"], older["indexer"]["judged_negatives"]
    (tmp_path / "ck" / "indexer.json").write_text(json.dumps(older))
    cfg = load_checkpoint(tmp_path / "ck")[0].cfg
    assert (cfg.bos_input, cfg.judged_negatives) == ("learned", 0)
    doc["format_version"] = 99
    (tmp_path / "ck" / "indexer.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checkpoint format 99"):
        load_checkpoint(tmp_path / "ck")


def test_batches_hold_distinct_items_and_no_near_duplicate_queries(toy):
    import random

    pairs = toy["pairs"]
    prefix = np.arange(len(toy["cat"]))[:, None] % 3
    for b in make_batches(pairs, 16, 2, random.Random(0), prefix, group_size=4):
        assert len(set(b.items)) == len(b.items)
        keys = [near_duplicate_key(pairs.query_texts[q]) for q in b.queries]
        assert len(set(keys)) == len(keys)
        assert all(b.positive[n, pos] for n, pos in enumerate(b.query_item))
        # grouped: runs of up to 4 items share their prefix
        assert prefix[b.items[0], 0] == prefix[b.items[1], 0]
    assert near_duplicate_key("Drill  cordless") == near_duplicate_key("cordless drill")


def test_losses_on_hand_made_inputs():
    q = torch.eye(3)
    d = torch.eye(3)
    pos = torch.eye(3, dtype=torch.bool)
    # perfectly aligned unit vectors: the loss is small, and worse when positives are shuffled
    good = multi_positive_nce(q, d, pos, 0.05)
    bad = multi_positive_nce(q, d.flip(0), pos, 0.05)
    assert good < 1e-3 < bad
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert code_kl(logits, logits) == pytest.approx(0.0, abs=1e-7)
    assert code_kl(logits, logits.flip(1)) > 0.5


def test_sinkhorn_targets_spread_rows_that_prefer_one_code():
    # 4 rows all closest to code 0, each with a different runner-up: argmax would give one code
    cos = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.1, 0.1],
            [0.9, 0.1, 0.5, 0.1, 0.1],
            [0.9, 0.1, 0.1, 0.5, 0.1],
            [0.9, 0.1, 0.1, 0.1, 0.5],
        ]
    )
    target = sinkhorn_targets(cos, epsilon=0.05, iters=10)
    assert torch.allclose(target.sum(1), torch.ones(4), atol=1e-5)
    assert cos.argmax(1).unique().numel() == 1
    assert target.argmax(1).unique().numel() == 4  # balanced: one code each
    # every code gets the same share of the batch (4 rows over 5 codes: 0.8 each)
    assert torch.allclose(target.sum(0), torch.full((5,), 0.8), atol=1e-3)
    # also when the rows are not symmetric: 12 rows, most preferring code 0, over 4 codes
    lopsided = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
    lopsided[:, 0] += 0.5
    shares = sinkhorn_targets(lopsided, epsilon=0.05, iters=50).sum(0)
    assert torch.allclose(shares, torch.full((4,), 3.0), atol=1e-3)
    # with rows that already disagree, the targets keep their choices
    own = sinkhorn_targets(torch.eye(5)[:4] * 0.9, epsilon=0.05, iters=10)
    assert own.argmax(1).tolist() == [0, 1, 2, 3]
    # the soft cross-entropy is lowest when logits point at the target
    assert soft_cross_entropy(own.log(), own) < soft_cross_entropy(own.flip(1).log(), own)


def test_code_stats_counts_paths_of_the_levels_so_far():
    codes = np.array([[0, 1], [0, 1], [0, 2], [3, 1]])
    stats = code_stats(codes, k=4)
    assert stats["paths"] == 3
    assert stats["utilisation"] == pytest.approx(2 / 4)  # level 2 uses codes 1 and 2


class _LrRecorder(Trainer):
    """Records (level, main phase, encoder lr, decoder lr) at every optimiser step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrs: list[tuple[int, bool, float, float]] = []

    def loss(self, batch, level, main):
        groups = self.opt.param_groups
        self.lrs.append((level, main, groups[0]["lr"], groups[1]["lr"]))
        return super().loss(batch, level, main)


def test_linear_lr_schedule_falls_over_the_whole_run_and_resumes_where_it_was(toy):
    cfg = tiny_config(lr_schedule="linear", warmup_epochs=1.0, epochs_per_level=[1.0, 1.0])
    torch.manual_seed(0)
    model = SemanticIndexer(cfg)
    t = _LrRecorder(model, toy["items"], toy["queries"], toy["pairs"])
    assert t.run_length() == 4.0
    t.train()
    enc = np.array([r[2] for r in t.lrs])
    assert enc[0] == cfg.lr  # the first step of the run uses the full rate
    assert np.all(np.diff(enc) < 0)  # falls at every step, across warm-ups, levels and phases
    assert 0 < enc[-1] < 0.1 * cfg.lr  # ... down to about zero by the last step
    assert t.epochs_done == pytest.approx(t.run_length())
    assert {r[3] for r in t.lrs} == {cfg.head_lr}  # the decoder's rate stays constant
    assert {r[1] for r in t.lrs if r[0] == 1} == {False, True}  # level 2 ran both phases
    # half way through the run (after level 1's warm-up and main phase) the rate is halved
    level2 = [r[2] for r in t.lrs if r[0] == 1]
    assert level2[0] == pytest.approx(cfg.lr / 2)

    # resuming at level 2 continues the schedule instead of starting it again
    again = _LrRecorder(SemanticIndexer(cfg), toy["items"], toy["queries"], toy["pairs"])
    again.state.codes[:, 0] = t.state.codes[:, 0]
    again.train(start_level=1)
    assert again.lrs[0][2] == pytest.approx(cfg.lr / 2)
    assert again.epochs_done == pytest.approx(again.run_length())


def test_constant_lr_schedule_and_unknown_schedules(toy, trained):
    t = trained["trainer"]  # the default schedule
    assert t.cfg.lr_schedule == "constant"
    assert t.encoder_lr_after(0.0) == t.encoder_lr_after(t.run_length()) == t.cfg.lr
    assert t.opt.param_groups[0]["lr"] == t.cfg.lr
    with pytest.raises(ValueError, match="lr_schedule"):
        IndexerConfig(lr_schedule="cosine")


def test_code_loss_temperature_sharpens_only_the_kl_and_commitment(trained):
    t = trained["trainer"]
    batch = t.epoch_batches(1)[0]
    default = t.cfg
    parts = {}
    t.model.eval()  # no dropout: the same batch gives the same representations
    try:
        for name, value in (("none", None), ("same", default.code_temperature), ("sharp", 0.05)):
            t.cfg = dataclasses.replace(default, code_loss_temperature=value)
            with torch.no_grad():
                parts[name] = t.loss(batch, 1, main=False)[1]  # KL and commitment at level 1
    finally:
        t.cfg = default
        t.model.train()
    assert parts["same"] == parts["none"]
    assert {"kl", "commit"} <= parts["sharp"].keys()
    for key in ("kl", "commit"):
        assert parts["sharp"][key] != pytest.approx(parts["none"][key])
    for key in ("nce", "enc_nce"):
        assert parts["sharp"][key] == parts["none"][key]
    with pytest.raises(ValueError, match="code_loss_temperature"):
        IndexerConfig(code_loss_temperature=0.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{levels: 2", "not valid JSON"),
        ("[2, 8]", "must hold a JSON object"),
        ('{"levels": "2"}', 'levels: expected an integer, got "2"'),
        ('{"levels": 2.0}', "levels: expected an integer, got 2.0"),
        ('{"lr": true}', "lr: expected a number or null, got true"),
        ('{"hard_negatives": 1}', "hard_negatives: expected true or false, got 1"),
        ('{"epochs_per_level": [1, "2", 1]}', "epochs_per_level: expected a list of numbers"),
        ('{"code_loss_temperature": "0.05"}', "code_loss_temperature: expected a number or null"),
    ],
)
def test_a_config_file_with_a_wrong_value_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="cfg.json: ") as info:
        IndexerConfig.from_file(path)
    assert message in str(info.value)


def test_a_config_file_takes_json_numbers_and_null_where_they_fit(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"lr": 1, "epochs_per_level": [1, 0.5, 2], "code_loss_temperature": null}')
    cfg = IndexerConfig.from_file(path)
    assert (cfg.lr, cfg.epochs_per_level, cfg.code_loss_temperature) == (1, [1, 0.5, 2], None)


@pytest.mark.parametrize(
    ("init", "self_supervised", "lr", "expected"),
    [
        ("auto", False, None, ("dense-ft", 2e-5)),
        ("auto", True, None, ("minilm", 5e-5)),
        ("minilm", False, None, ("minilm", 5e-5)),
        ("dense-ft", False, None, ("dense-ft", 2e-5)),
        ("auto", False, 1e-4, ("dense-ft", 1e-4)),  # a rate set in the config is kept
    ],
)
def test_the_encoder_rate_follows_the_start_unless_set(init, self_supervised, lr, expected):
    cfg = IndexerConfig(encoder_init=init, lr=lr)
    if lr is None:
        with pytest.raises(ValueError, match="lr is unresolved"):
            cfg.encoder_lr  # noqa: B018 - the property is what is under test
    cfg.resolve_start(self_supervised)
    assert (cfg.encoder_init, cfg.encoder_lr) == expected
    with pytest.raises(ValueError, match="lr must be > 0"):
        IndexerConfig(lr=0.0)


def test_training_leaves_the_cached_lower_layers_as_pretrained(toy, trained):
    """Training reads the embeddings' and lower layers' token states from a cache computed
    once (`compute_states`), which is only right while those layers never change: they are
    frozen, and after two levels of training they still equal MiniLM's."""
    from transformers import AutoModel

    model = toy["model"]
    frozen = [*model.embeddings.parameters(), *model.lower.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.upper.parameters())
    base = AutoModel.from_pretrained(minilm_path(), attn_implementation="eager")
    want = [*base.embeddings.parameters(), *base.encoder.layer[: model.n_frozen].parameters()]
    assert len(want) == len(frozen)
    for got, ref in zip(frozen, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    top = base.encoder.layer[model.n_frozen :].parameters()
    assert any(not torch.equal(p, q) for p, q in zip(model.upper.parameters(), top, strict=True))


def test_assigned_codes_follow_each_items_own_fixed_prefix(toy, trained):
    """An item's level-2 code is the model's best code after the item's own level-1 code."""
    t, model = trained["trainer"], toy["model"]
    reps = step_representations(model, toy["items"], t.state.codes[:, :1], desc="test")
    with torch.no_grad():
        best = model.code_logits(reps[:, 1], 1).argmax(-1).numpy()
    # assign_level(1) was the fixture's last step: the same model, so every code agrees
    assert np.array_equal(best, t.state.codes[:, 1])


def test_commitment_holds_both_items_and_queries_on_the_fixed_codes(toy, trained):
    """GSID's commitment term: cross-entropy of the items' and of their queries' code logits
    against the items' fixed codes at every finished level, averaged over those levels."""
    import random

    from torch.nn import functional as F

    t, model, cfg = trained["trainer"], toy["model"], trained["trainer"].cfg
    batch = make_batches(toy["pairs"], 8, 2, random.Random(0))[0]
    was = model.training
    model.eval()  # no dropout: the two computations below must see the same network
    try:
        with torch.no_grad():
            _, parts = t.loss(batch, level=1, main=False)
            fixed = torch.from_numpy(t.state.codes[np.asarray(batch.items), :1])
            h_d, _ = encode_by_length(model, toy["items"], batch.items, fixed)
            q_item = torch.tensor(batch.query_item)
            h_q, _ = encode_by_length(model, toy["queries"], batch.queries, fixed[q_item])
            sharpen = cfg.code_temperature / (cfg.code_loss_temperature or cfg.code_temperature)
            items = F.cross_entropy(model.code_logits(h_d[:, 0], 0) * sharpen, fixed[:, 0])
            queries = F.cross_entropy(model.code_logits(h_q[:, 0], 0) * sharpen, fixed[q_item, 0])
    finally:
        model.train(was)
    assert parts["commit"] == pytest.approx(cfg.commit_weight * float(items + queries), rel=1e-5)
