"""The MoE runtime on the CPU with the tiny preset: config, router, expert dispatch, streams, reports (pretraining and
checkpoints: test_pretrain.py)."""

import hashlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import moe_runtime as mr
from kernels import fused_route_reference, grouped_swiglu_reference, total_flops

BAD_CONFIGS = [  # (overrides, what the message must say: the field and the bad value)
    (dict(top_k=5), "MoEConfig.top_k (5) must be <= num_experts (4)"),
    (dict(d_model=0), "MoEConfig.d_model must be a positive integer, got 0"),
    (dict(n_layers=-1), "MoEConfig.n_layers must be a positive integer, got -1"),
    (dict(expert_widths=(16, 32)), "MoEConfig.expert_widths has 2 entries; num_experts is 4"),
    (dict(expert_widths=(16, 32, 0, 64)), "MoEConfig.expert_widths must all be positive, got (16, 32, 0, 64)"),
    (dict(n_heads=3), "must be divisible by n_heads (3)"),
    (dict(dtype="float8"), "MoEConfig.dtype 'float8' is not one of"),
    (dict(device="tpu"), "MoEConfig.device 'tpu' is not one of"),
    (dict(aux_loss_coef=float("nan")), "MoEConfig.aux_loss_coef must be finite"),  # was accepted: every loss NaN
    (dict(expert_widths=(16.7, 32, 48, 64)), "MoEConfig.expert_widths must be integers"),  # was truncated to 16
    (dict(seed=-1), "MoEConfig.seed must be an integer >= 0, got -1"),  # was numpy's message, naming no seed
    (dict(vocab_size=10), "MoEConfig.vocab_size must be >= 256"),  # was an IndexError from the embedding
]


@pytest.fixture(scope="module")
def tiny():
    return mr.MoEConfig.preset("tiny")


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mr.MoEConfig.preset("tiny", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match=r"unknown MoEConfig preset 'huge'; choose one of \('tiny', 'default', 'gpu'\)"):
        mr.MoEConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown MoEConfig field"):
        mr.MoEConfig.preset("tiny", d_modle=3)


def test_presets_share_width_ratios():
    d, g = mr.MoEConfig.preset("default"), mr.MoEConfig.preset("gpu")
    assert d.num_experts == g.num_experts
    rd = np.array(d.expert_widths) / d.expert_widths[0]
    rg = np.array(g.expert_widths) / g.expert_widths[0]
    np.testing.assert_allclose(rd, rg)
    assert g.d_model >= 1024 and g.seq_len * g.batch_size >= 16384
    flops = d.expert_flops_per_token()
    assert flops == sorted(flops) and flops[-1] > 7 * flops[0]  # heterogeneous: widest ~8x the narrowest


def test_router_topk_and_renormalisation_match_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 6, generator=g)
    r = fused_route_reference(logits, None, 3)
    probs = torch.softmax(logits, -1)
    ref_w, ref_i = torch.topk(probs, 3, -1)
    assert torch.equal(r.topk_ids, ref_i)
    torch.testing.assert_close(r.topk_weights, ref_w / ref_w.sum(-1, keepdim=True))
    assert r.expert_counts.sum() == 64 * 3


def test_biases_change_selection_not_combine_source():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(128, 4, generator=g)
    bias = torch.tensor([0.0, 0.0, 0.3, 0.0])
    r = fused_route_reference(logits, bias, 2)
    r0 = fused_route_reference(logits, None, 2)
    assert not torch.equal(r.topk_ids, r0.topk_ids)  # selections moved
    probs = torch.softmax(logits, -1)
    picked = torch.gather(probs, -1, r.topk_ids)  # unbiased scores of the chosen experts
    torch.testing.assert_close(r.topk_weights, picked / picked.sum(-1, keepdim=True))


def test_large_bias_sends_every_token_to_one_expert(tiny):
    rt = mr.MoERuntime(tiny)
    b = np.full(tiny.num_experts, -100.0)
    b[2] = 100.0
    rt.set_routing_biases(b)
    counts = np.array(rt.step(256).expert_token_counts)  # (L, E)
    assert (counts[:, 2] == 256).all()  # every token has expert 2 among its top-k


def test_per_layer_biases(tiny):
    rt = mr.MoERuntime(tiny)
    b = np.zeros((tiny.n_layers, tiny.num_experts))
    b[0, 1] = 100.0
    b[1, 3] = 100.0
    rt.set_routing_biases(b)
    counts = np.array(rt.step(128).expert_token_counts)
    assert counts[0, 1] == 128 and counts[1, 3] == 128
    with pytest.raises(ValueError, match="shape"):
        rt.set_routing_biases(np.zeros(tiny.num_experts + 1))


def test_router_aux_loss_and_entropy_on_known_distributions(tiny):
    """Switch aux loss E * sum_e (share of slots on e) * (mean probability of e) and the routing entropy, by hand.

    Uniform scores (zero gate): every share-probability product sums to 1/E, so the aux loss is exactly 1 per layer
    and the entropy log(E). Every token with scores p = (0.4, 0.3, 0.2, 0.1), top-2: the slots split evenly over
    experts 0 and 1, so aux = 4 * (0.5 * 0.4 + 0.5 * 0.3) = 1.4 and the entropy is -sum p log p.
    """
    torch.manual_seed(0)
    E, L = tiny.num_experts, tiny.n_layers
    model = mr.MoETransformer(tiny).eval()
    with torch.no_grad():
        for layer in model.moe_layers:
            layer.gate.weight.zero_()
        idx = torch.randint(0, tiny.vocab_size, (3, tiny.seq_len), generator=torch.Generator().manual_seed(1))
        out = model(idx, idx)
    assert float(out.aux_loss) == pytest.approx(1.0 * L, rel=1e-5)  # summed over the layers
    np.testing.assert_allclose(out.router_entropy.numpy(), [np.log(E)] * L, rtol=1e-5)

    assert (E, tiny.top_k) == (4, 2)
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    layer = model.moe_layers[0]
    x = torch.zeros(50, tiny.d_model)
    x[:, 0] = 1.0
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[:, 0] = torch.log(p)  # logits = log p: softmax scores p for every token
        _, aux, counts, entropy = layer(x)
    assert counts.tolist() == [50, 50, 0, 0]
    assert float(aux) == pytest.approx(1.4, rel=1e-5)
    assert float(entropy) == pytest.approx(-float((p * p.log()).sum()), rel=1e-5)  # 1.2799 nats


def test_the_paired_reference_is_the_unbiased_model_on_the_same_tokens(tiny):
    """`reference_loss` scores the interval's first tokens with zero biases even while biases are set (and leaves them
    set): it equals what an unbiased runtime of the same weights and stream serves on those tokens, and differs from
    the biased runtime's own `served_reference_loss`."""
    narrow = np.where(np.array(tiny.expert_widths) <= np.median(tiny.expert_widths), 2.0, -2.0)
    biased = mr.MoERuntime(tiny, seed=3, reference_tokens=16)  # both initialised from tiny.seed: the same weights
    plain = mr.MoERuntime(tiny, seed=3, reference_tokens=16)
    biased.set_routing_biases(narrow)
    for _ in range(2):
        rb, rp = biased.step(64), plain.step(64)
        assert rp.reference_loss == pytest.approx(rp.served_reference_loss, abs=1e-5)  # no control: no gap
        assert rb.reference_loss == pytest.approx(rp.served_reference_loss, abs=1e-5)
        assert abs(rb.served_reference_loss - rb.reference_loss) > 1e-3
        assert rb.loss != pytest.approx(rp.loss, abs=1e-4)  # the biases served
    for layer in biased.model.moe_layers:
        np.testing.assert_array_equal(layer.selection_bias.numpy(), narrow.astype(np.float32))


def test_context_positions_are_read_but_not_scored(tiny):
    """`context=c`: the logits are those of the whole rows, and the loss, expert counts and entropy are those of
    positions >= c alone (counted here from each router's logits, taken by a forward hook)."""
    torch.manual_seed(0)
    model = mr.MoETransformer(tiny).eval()
    idx = torch.randint(0, tiny.vocab_size, (2, 20), generator=torch.Generator().manual_seed(4))
    tgt = torch.randint(0, tiny.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    gate_logits = []
    hooks = [layer.gate.register_forward_hook(lambda m, a, out: gate_logits.append(out)) for layer in model.moe_layers]
    with torch.no_grad():
        full, part = model(idx, tgt), model(idx, tgt, context=7)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(part.logits, full.logits)
    want = F.cross_entropy(full.logits[:, 7:].reshape(-1, tiny.vocab_size), tgt[:, 7:].reshape(-1))
    assert float(part.loss) == pytest.approx(float(want), rel=1e-6)
    assert float(part.loss) != pytest.approx(float(full.loss), rel=1e-4)
    scored = (torch.arange(20) >= 7).repeat(2)
    for layer, logits, counts, entropy in zip(
        model.moe_layers, gate_logits[tiny.n_layers :], part.expert_counts, part.router_entropy
    ):
        r = fused_route_reference(logits[scored], layer.selection_bias, tiny.top_k)
        assert counts.tolist() == r.expert_counts.tolist() and int(counts.sum()) == 26 * tiny.top_k
        assert float(entropy) == pytest.approx(float(-(r.scores * r.scores.log()).sum(-1).mean()), rel=1e-5)
    for bad in (20, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"context must be an integer in \[0, 20\) for sequences of 20 tokens"):
            model(idx, tgt, context=bad)


def test_model_names_bad_token_ids(tiny):
    model = mr.MoETransformer(tiny)
    for ids, message in (
        (torch.tensor([[1, tiny.vocab_size]]), rf"token ids must lie in \[0, {tiny.vocab_size}\), got ids from 1 to"),
        (torch.tensor([[-1, 3]]), "got ids from -1 to 3"),
        (torch.zeros(4, dtype=torch.long), r"a \[batch, seq\] int32/int64 tensor, got torch.int64 of shape \(4,\)"),
        (torch.zeros(1, 4), "int32/int64 tensor, got torch.float32"),
        (torch.zeros(1, 4, dtype=torch.uint8), "int32/int64 tensor, got torch.uint8"),
    ):
        with pytest.raises(ValueError, match=message):
            model(ids)
    assert model(torch.full((2, 3), tiny.vocab_size - 1, dtype=torch.int32)).logits.shape == (2, 3, tiny.vocab_size)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_expert_dispatch_equals_dense_per_token_reference(k):
    g = torch.Generator().manual_seed(k)
    widths = (3, 8, 5, 16)
    d, T = 12, 37
    x = torch.randn(T, d, generator=g)
    logits = torch.randn(T, 4, generator=g)
    logits[:, 0] -= 100.0  # expert 0 gets no token unless k = E
    w_up = torch.randn(d, 2 * sum(widths), generator=g)
    w_down = torch.randn(sum(widths), d, generator=g)
    r = fused_route_reference(logits, None, k)
    out = grouped_swiglu_reference(x, r.topk_ids, r.topk_weights, w_up, w_down, widths)
    ref = torch.zeros(T, d)
    offs = np.cumsum((0,) + widths)
    for t in range(T):
        for j in range(k):
            e = int(r.topk_ids[t, j])
            f, o = widths[e], offs[e]
            h = x[t] @ w_up[:, 2 * o : 2 * o + 2 * f]
            ref[t] += r.topk_weights[t, j] * ((F.silu(h[:f]) * h[f:]) @ w_down[o : o + f])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_stream_is_deterministic_and_continuous():
    a = mr.TokenStream(seed=3)
    b = mr.TokenStream(seed=3)
    c = mr.TokenStream(seed=4)
    ta, _ = a.next(500)
    tb, _ = b.next(500)
    assert np.array_equal(ta, tb)
    assert not np.array_equal(ta, c.next(500)[0])
    nxt, _ = a.next(10)
    assert nxt[0] == ta[-1]  # the last target is the next input


def test_domain_switch_happens_where_scheduled():
    s = mr.TokenStream(mr.DomainSchedule.shift("prose", "code", 300), seed=0)
    _, d1 = s.next(200)
    _, d2 = s.next(200)
    assert set(d1) == {"prose"}
    assert d2[:100] == ["prose"] * 100 and d2[100:] == ["code"] * 100


def test_splits_do_not_overlap():
    """The splits partition the corpus: validation and test are whole 4 KiB blocks taken from distinct aligned places
    in it, and train is the rest of its bytes in order, so no byte is in two splits or lost."""
    from moe_runtime.streams import BLOCK_BYTES, _code_bytes, _prose_bytes

    for name, data in (("prose", _prose_bytes()), ("code", _code_bytes())):
        c = mr.load_corpus(name)
        assert c.sha256 == hashlib.sha256(data).hexdigest()  # the bytes the corpus was built from
        blocks = [data[o : o + BLOCK_BYTES] for o in range(0, len(data), BLOCK_BYTES)]
        taken: set[int] = set()
        for split in ("validation", "test"):
            held = c.splits[split].tobytes()
            assert len(held) % BLOCK_BYTES == 0 and len(held) > 0, split
            for k in range(0, len(held), BLOCK_BYTES):
                where = [i for i, b in enumerate(blocks) if b == held[k : k + BLOCK_BYTES] and i not in taken]
                assert where, f"{name} {split}: a block that is not a block of the corpus, or one taken twice"
                taken.add(where[0])
        rest = b"".join(b for i, b in enumerate(blocks) if i not in taken)
        assert c.splits["train"].tobytes() == rest
        assert len(c.splits["train"]) > 10 * len(c.splits["test"]) > 0


def test_missing_or_empty_corpus_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        mr.load_corpus(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        mr.load_corpus(str(empty))


def test_user_text_file_stream(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_bytes(b"hello world " * 2000)
    s = mr.TokenStream(mr.DomainSchedule.constant(str(f)), split="train", seed=0)
    t, d = s.next(100)
    assert set(t.tobytes()) <= set(b"helo wrd") and d[0] == str(f)


def test_step_report_counts_and_flops_add_up(tiny):
    rt = mr.MoERuntime(tiny)
    rep = rt.step(200)  # not a multiple of seq_len: a remainder sequence too
    counts = np.array(rep.expert_token_counts)
    assert counts.shape == (tiny.n_layers, tiny.num_experts)
    assert (counts.sum(1) == 200 * tiny.top_k).all()
    assert rep.flops_total == pytest.approx(total_flops(rep.work))
    expert_calls = [c for c in rep.work if c.expert >= 0]
    assert sum(c.tokens for c in expert_calls if c.op == "gemm_up") == 200 * tiny.top_k * tiny.n_layers
    per_expert = np.zeros(tiny.num_experts)
    for c in expert_calls:
        per_expert[c.expert] += c.flops()
    np.testing.assert_allclose(per_expert, rep.flops_per_expert)
    fpt = np.array(tiny.expert_flops_per_token())
    np.testing.assert_allclose(per_expert, counts.sum(0) * fpt)
    assert np.isfinite(rep.loss) and 0 < rep.router_entropy <= np.log(tiny.num_experts) + 1e-6


def test_control_action():
    a = mr.ControlAction.uncontrolled()
    assert not a.ttt_enabled and np.array_equal(a.biases(4), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        mr.ControlAction(routing_biases=(float("nan"),))
    with pytest.raises(ValueError, match="experts"):
        mr.ControlAction(routing_biases=(0.0, 1.0)).biases(4)
    assert mr.ControlAction(ttt_frequency_tokens=np.float32(1024.0)).ttt_frequency_tokens == 1024  # a decoded count
    for bad in (float("nan"), 2.5, "8", True):  # NaN failed later, inside a TTT update; 2.5 was kept as 2.5
        with pytest.raises(ValueError, match=r"ttt_frequency_tokens must be a whole number of tokens, got "):
            mr.ControlAction(ttt_frequency_tokens=bad)


@pytest.mark.parametrize("tokens", [0, -5, 2.5, float("nan"), "8", True])
def test_step_takes_a_positive_whole_token_count(tiny, tokens):
    with pytest.raises(ValueError, match=r"num_tokens must be a positive integer, got "):
        mr.MoERuntime(tiny).step(tokens)


def test_runtime_apply_takes_all_of_an_action_or_none(tiny):
    runtime = mr.MoERuntime(tiny)  # no TTT engine
    before = [p.clone() for p in runtime.model.buffers()]
    with pytest.raises(ValueError, match="no TTT engine"):
        runtime.apply(mr.ControlAction((1.0, 2.0, 3.0, 4.0), ttt_frequency_tokens=100))
    assert all(torch.equal(a, b) for a, b in zip(before, runtime.model.buffers()))  # the biases did not move
    assert runtime.action == mr.ControlAction.uncontrolled(4)
    runtime.apply(mr.ControlAction((1.0, 2.0, 3.0, 4.0)))
    assert not all(torch.equal(a, b) for a, b in zip(before, runtime.model.buffers()))


def test_runtime_serves_a_model_of_its_config_and_keeps_its_stream_seed(tiny):
    model = mr.MoETransformer(tiny)
    assert mr.MoERuntime(model=model).config.model_key() == tiny.model_key()  # the model's own config
    with pytest.raises(ValueError, match=r"shaped for another MoEConfig \(d_model 32, layers 2"):
        mr.MoERuntime(mr.MoEConfig(), model=mr.MoETransformer(tiny))
    runtime = mr.MoERuntime(tiny, seed=3)
    first = runtime.step(32).loss
    runtime.reset_stream()  # from the start again, with the seed it was built with (was always 0)
    assert runtime.step(32).loss == first


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(expert_widths=64), "expert_widths must be a sequence"),  # was "'int' object is not iterable"
        (dict(dropout="0.1"), "dropout must be a number"),  # was a TypeError from `<=`
        (dict(aux_loss_coef="x"), "aux_loss_coef must be a number"),
    ],
)
def test_config_values_of_the_wrong_kind_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        mr.MoEConfig.preset("tiny", **overrides)


def test_config_takes_numpy_integers():
    """A sweep's np.int64 was refused as "must be a positive integer, got np.int64(64)"."""
    cfg = mr.MoEConfig.preset("tiny", d_model=np.int64(64), n_layers=np.int32(2), seed=np.int64(3))
    assert type(cfg.d_model) is int and type(cfg.seed) is int
    assert cfg.model_key() == mr.MoEConfig.preset("tiny", d_model=64, n_layers=2, seed=3).model_key()


def test_runtime_names_arguments_of_the_wrong_type(tiny, tmp_path):
    with pytest.raises(TypeError, match="config must be a MoEConfig"):
        mr.MoERuntime({"d_model": 32})
    with pytest.raises(TypeError, match="load_model"):  # a checkpoint path given as the model
        mr.MoERuntime(tiny, model=str(tmp_path / "model.pt"))
    rt = mr.MoERuntime(tiny)
    with pytest.raises(TypeError, match="apply takes a ControlAction, got list"):  # was AttributeError 'ttt_enabled'
        rt.apply([0.1] * tiny.num_experts)
    with pytest.raises(ValueError, match=r"one bias per expert \[E\], got shape \(2, 4\)"):
        mr.ControlAction(routing_biases=np.zeros((2, 4)))


