"""The TTT engine on the CPU with the tiny preset: schedule, causality, rollback, reset, learning, Muon, and the
safeguards of each step (gradient clip, update-norm limit, LaCT column norms, token-weighted chunks)."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import moe_runtime as mr
from moe_runtime.muon import newton_schulz

METHODS = ["fast_weights", "lora", "tent"]
# (frequency, chunk) applied before each step, and the step sizes: constant, chunk > frequency, off -> on,
# lowered mid-stream so an update is already overdue, raised mid-stream, frequency not a multiple of seq_len.
SCHEDULES = [
    ([(64, 64)] * 4, [100, 100, 100, 100]),
    ([(50, 200)] * 3, [128, 37, 300]),
    ([(0, 64), (0, 64), (96, 32), (96, 32)], [100, 100, 100, 100]),
    ([(200, 64), (60, 64), (60, 64)], [150, 10, 130]),
    ([(40, 40), (150, 80), (150, 80), (0, 80), (70, 16)], [90, 90, 90, 50, 200]),
]
NS_SHAPES = [(64, 128), (128, 64), (3, 16, 48), (128, 8)]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return mr.MoEConfig.preset("tiny")


def make_runtime(cfg, **ttt):
    ttt.setdefault("lr", 0.02)
    engine = mr.TTTEngine(mr.TTTConfig(**ttt))
    return mr.MoERuntime(cfg, schedule=mr.DomainSchedule.shift("prose", "code", 150), seed=1, ttt=engine), engine


def expected_update_points(schedule, steps):
    """Positions (tokens served) where updates fire, by the rule in `TTTEngine.set_schedule`, token by token."""
    points, served, since, freq = [], 0, 0, 0
    for (f, _), n in zip(schedule, steps):
        if f and not freq:
            since = 0
        freq = f
        for _ in range(n + 1):  # an update can fire before any token of the step is served, and after the last
            if freq and since >= freq:
                points.append(served)
                since = 0
            if _ == n:
                break
            served += 1
            since += 1 if freq else 0
    return points


@pytest.mark.parametrize("schedule,steps", SCHEDULES)
def test_updates_fire_exactly_when_due_and_train_only_on_scored_tokens(tiny, schedule, steps):
    rt, engine = make_runtime(tiny, method="fast_weights")
    served = []  # (first position, tokens) of each serving forward, in order
    contexts = []  # (first position, context tokens) of each serving forward
    trained = []  # (tokens served when the update ran, first, end, target bytes of the chunk)
    forward, chunk_batches = engine.forward, engine._chunk_batches

    def spy_forward(idx, targets=None, context=0):
        start = sum(n for _, n in served)
        served.append((start, idx.numel() - context * idx.shape[0]))  # scored tokens; the context was served before
        contexts.append((start, idx[:, :context].reshape(-1).numpy()))
        return forward(idx, targets, context)

    def spy_batches(n):
        batches = chunk_batches(n)
        tgt = torch.cat([y.reshape(-1) for _, y in batches]).numpy()
        trained.append((sum(k for _, k in served), engine.tokens_seen - n, engine.tokens_seen, tgt))
        return batches

    engine.forward, engine._chunk_batches = spy_forward, spy_batches
    per_step = []
    for (f, c), n in zip(schedule, steps):
        rt.apply(mr.ControlAction(ttt_frequency_tokens=f, ttt_chunk_tokens=c))
        rep = rt.step(n)
        per_step.append(rep.ttt_updates)
        assert rep.ttt_skipped_updates == 0
    points = expected_update_points(schedule, steps)
    assert [t[2] for t in trained] == points
    assert sum(per_step) == len(points)
    stream = mr.TokenStream(mr.DomainSchedule.shift("prose", "code", 150), split="test", seed=1)
    data, _ = stream.next(sum(steps))
    for (served_then, first, end, tgt), chunk in zip(trained, [c for c in _chunk_at(schedule, steps, points)]):
        assert served_then == end  # every pair in the chunk had been predicted and scored before the update
        assert end - first == min(chunk, end)  # the most recent chunk_tokens pairs (all, early in the stream)
        np.testing.assert_array_equal(tgt, data[first + 1 : end + 1])
    for start, n in served:  # a serving forward never straddles an update: later tokens see the updated weights
        assert not any(start < p < start + n for p in points)
    cut = 0
    for start, ctx in contexts:  # a sequence an update cut goes on with its earlier tokens as context
        np.testing.assert_array_equal(ctx, data[start - len(ctx) : start])
        cut += len(ctx) > 0
    assert cut == sum(1 for p in points if 0 < p < sum(steps) and (p - _step_start(steps, p)) % tiny.seq_len)


def _step_start(steps, p):
    """Tokens served before the step in which position p is served (the step's sequence grid starts there)."""
    bounds = np.cumsum([0] + list(steps))
    return max(b for b in bounds[:-1] if b <= p) if p < bounds[-1] else bounds[-1]


def test_an_update_changes_the_served_loss_only_through_the_weights(tiny):
    """With updates too small to change a weight, TTT serves exactly what no TTT serves: updates at positions off the
    sequence grid (every 50 tokens, seq_len 32) cut no token's context, counts or reference pairing."""
    rt, engine = make_runtime(tiny, method="fast_weights", lr=1e-12)
    plain = mr.MoERuntime(tiny, schedule=mr.DomainSchedule.shift("prose", "code", 150), seed=1)
    rt.reference_tokens = plain.reference_tokens = 64  # an update falls within the paired tokens (at 50)
    plain.model.load_state_dict(rt.model.state_dict())
    rt.apply(mr.ControlAction(ttt_frequency_tokens=50, ttt_chunk_tokens=64))
    for n in (100, 75, 130):
        with_ttt, without = rt.step(n), plain.step(n)
        assert with_ttt.loss == pytest.approx(without.loss, rel=1e-6, abs=1e-6)
        assert with_ttt.expert_token_counts == without.expert_token_counts
        assert with_ttt.router_entropy == pytest.approx(without.router_entropy, rel=1e-6)
        assert with_ttt.served_reference_loss == pytest.approx(without.served_reference_loss, rel=1e-6, abs=1e-6)
    assert engine.updates_done == 6 and not engine._pristine


def _chunk_at(schedule, steps, points):
    """The chunk size in force at each update point."""
    bounds = np.cumsum([0] + list(steps))
    out = []
    for p in points:
        i = max(i for i in range(len(steps)) if bounds[i] <= p)
        out.append(schedule[i][1])
    return out


@pytest.mark.parametrize("method", METHODS)
def test_off_changes_nothing(tiny, method):
    rt, engine = make_runtime(tiny, method=method, frequency_tokens=0)
    plain = mr.MoERuntime(tiny, model=rt.model, schedule=rt.stream.schedule, seed=1)
    before = engine.adapted_state()
    for _ in range(3):
        rep, ref = rt.step(200), plain.step(200)
        assert rep.loss == ref.loss and rep.expert_token_counts == ref.expert_token_counts
        assert rep.ttt_updates == rep.ttt_tokens_trained == 0 and rep.ttt_wall_time_s == 0.0
        assert all(c.phase == "forward" for c in rep.work)
    after = engine.adapted_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", METHODS)
def test_reset_restores_bit_for_bit(tiny, method):
    rt, engine = make_runtime(tiny, method=method, frequency_tokens=64, chunk_tokens=64, lr=0.05, vector_lr=0.05)
    initial = engine.adapted_state()
    idx = torch.randint(0, 256, (2, tiny.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits0 = engine.forward(idx).logits.clone()
    reps = [rt.step(128) for _ in range(3)]
    assert sum(r.ttt_updates for r in reps) == 6
    moved = engine.adapted_state()
    assert any(not torch.equal(initial[k], moved[k]) for k in initial)
    with torch.inference_mode():
        assert not torch.equal(engine.forward(idx).logits, logits0)
    rt.reset_ttt()
    restored = engine.adapted_state()
    assert all(torch.equal(initial[k], restored[k]) for k in initial)
    with torch.inference_mode():
        assert torch.equal(engine.forward(idx).logits, logits0)
        assert torch.equal(engine._adapted_forward(idx, None, record=False).logits, logits0)  # initial = base
    assert engine.tokens_seen == engine.updates_done == 0 and engine.tokens_until_due() == 64


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("fault", ["loss", "grad", "second_step"])
def test_non_finite_update_is_rolled_back_and_counted(tiny, fault):
    rt, engine = make_runtime(tiny, method="fast_weights", frequency_tokens=64, chunk_tokens=64, steps_per_update=2)
    rt.step(64)  # one good update, so that optimiser state exists and weights are off their initial values
    before = engine.adapted_state()
    momentum_before = [[b.clone() for b in _buffers(o)] for o in engine._optimizers]
    objective, calls = engine._objective, []

    def broken(out):
        calls.append(1)
        loss = objective(out)
        if fault == "loss":
            return loss * float("nan")
        if fault == "grad" or len(calls) % 2 == 0:  # second_step: the first step succeeds and is undone
            return _NanGrad.apply(loss)
        return loss

    engine._objective = broken
    rep = rt.step(128)
    assert rep.ttt_skipped_updates == 2 and rep.ttt_updates == 0 and rep.ttt_tokens_trained == 0
    assert engine.skipped_updates == 2 and engine.updates_done == 1
    assert not engine.last_update.applied and "non-finite" in engine.last_update.reason
    after = engine.adapted_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    momentum_after = [_buffers(o) for o in engine._optimizers]
    assert all(torch.equal(a, b) for x, y in zip(momentum_before, momentum_after) for a, b in zip(x, y))
    assert np.isfinite(rep.loss) and np.isnan(rep.ttt_loss_after)
    assert any(c.phase == "ttt_backward" for c in rep.work) or fault == "loss"  # the wasted work is still reported


def _buffers(opt):
    return [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]


@pytest.mark.parametrize(
    "ttt",
    [
        dict(method="fast_weights", optimizer="muon", lr=0.3),
        dict(method="fast_weights", optimizer="adamw", lr=3e-2),
        dict(method="lora", optimizer="muon", lr=0.3),
        dict(method="lora", optimizer="adamw", lr=3e-2),
    ],
)
def test_updates_lower_the_loss_of_a_repeated_chunk(tiny, ttt):
    torch.manual_seed(0)
    engine = mr.TTTEngine(mr.TTTConfig(chunk_tokens=96, max_update_norm=0.0, lr_chunk_tokens=0, **ttt))
    engine.attach(mr.MoETransformer(tiny).eval().requires_grad_(False))
    chunk = np.frombuffer(b"def step(self, n):\n    return n + 1\n" * 3, dtype=np.uint8)[:97]
    engine.observe(chunk[:-1], chunk[1:])
    results = [engine.update() for _ in range(6)]
    assert all(r.applied and r.tokens == 96 for r in results)
    assert results[0].loss_after < results[0].loss_before
    assert results[-1].loss_after < results[0].loss_before - 0.3  # from ~5.55 nats (uniform) to below 5.25


def test_tent_lowers_prediction_entropy(tiny):
    torch.manual_seed(0)
    engine = mr.TTTEngine(
        mr.TTTConfig(method="tent", optimizer="adamw", lr=0.02, lr_chunk_tokens=0, steps_per_update=5)
    )
    model = mr.MoETransformer(tiny).eval().requires_grad_(False)
    model.tok_emb.weight.mul_(5.0)  # confident enough predictions that their entropy is well below log(256)
    engine.attach(model)
    data = np.frombuffer(b"The quick brown fox jumps over the lazy dog. " * 4, dtype=np.uint8)[:129]
    engine.observe(data[:-1], data[1:])
    idx = torch.from_numpy(data[:-1].astype(np.int64)).view(4, 32)

    def entropy():
        with torch.no_grad():
            return float(engine._objective(engine.forward(idx)))  # the adapted model's prediction entropy

    before = entropy()
    assert engine.update().applied
    assert entropy() < before - 0.05


def test_report_carries_ttt_work_and_feedback(tiny):
    rt, engine = make_runtime(tiny, frequency_tokens=128, chunk_tokens=96, steps_per_update=2)
    rep = rt.step(256)
    L, k = tiny.n_layers, tiny.top_k
    assert rep.ttt_updates == 2 and rep.ttt_tokens_trained == 2 * 96
    for phase, passes in (("ttt_forward", 3), ("ttt_backward", 2)):  # 2 steps + the loss-after check
        slots = sum(c.tokens for c in rep.work if c.phase == phase and c.expert >= 0 and c.op == "gemm_up")
        assert slots == 2 * passes * 96 * k * L
    assert rep.flops_total == pytest.approx(sum(c.flops() for c in rep.work))
    assert len(rep.ttt_grad_norms) == len(rep.ttt_activation_energy) == L
    assert all(g > 0 for g in rep.ttt_grad_norms) and all(a > 0 for a in rep.ttt_activation_energy)
    assert 0 < rep.ttt_wall_time_s < rep.wall_time_s
    assert np.isfinite(rep.ttt_loss_before) and np.isfinite(rep.ttt_loss_after)
    rt.apply(mr.ControlAction(ttt_frequency_tokens=0))
    quiet = rt.step(256)
    assert quiet.ttt_updates == 0 and quiet.ttt_grad_norms == [0.0] * L and np.isnan(quiet.ttt_loss_before)


@pytest.mark.parametrize("shape", NS_SHAPES)
def test_newton_schulz_orthogonalises(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
    x = newton_schulz(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.65 and s.max() < 1.2  # the quintic's plateau is about [0.68, 1.13]
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh  # the exact orthogonalisation U V^T
    assert torch.linalg.matrix_norm(x - polar).max() < 0.3 * torch.linalg.matrix_norm(polar).min()


def test_muon_step_is_orthogonal_with_spectral_norm_lr():
    p = torch.zeros(32, 64, requires_grad=True)
    opt = mr.Muon([p], lr=0.1, momentum=0.0)
    p.grad = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    opt.step()
    s = torch.linalg.svdvals(p.detach())
    assert 0.065 < s.min() and s.max() < 0.12
    with pytest.raises(ValueError, match="matrix"):
        mr.Muon([torch.zeros(5, requires_grad=True)])


def test_bad_settings_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"TTTConfig.method 'sgd' is not one of \('fast_weights', 'lora', 'tent'\)"):
        mr.TTTConfig(method="sgd")
    with pytest.raises(ValueError, match=r"TTTConfig.optimizer 'sgd' is not one of \('muon', 'adamw'\)"):
        mr.TTTConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="TTTConfig.lr must be positive and finite, got 0.0"):  # not vector_lr's
        mr.TTTConfig(lr=0.0)
    with pytest.raises(ValueError, match="frequency_tokens must be >= 0 .*got -1"):
        mr.TTTEngine().set_schedule(-1, 64)
    # each was accepted: NaN or inf rolled every update back silently, fractions were truncated or failed later
    for field, value in [("lr", float("inf")), ("vector_lr", float("nan")), ("grad_clip", float("nan")),
                         ("max_update_norm", float("inf")), ("frequency_tokens", float("nan")),
                         ("frequency_tokens", 2.5), ("chunk_tokens", 64.0), ("lr_chunk_tokens", True)]:  # fmt: skip
        with pytest.raises(ValueError, match=f"TTTConfig.{field} must be"):
            mr.TTTConfig(**{field: value})
    for frequency, chunk in ((100.9, 64), (128, 64.7), (float("nan"), 64)):
        with pytest.raises(ValueError, match="must be a whole number of tokens"):
            mr.TTTEngine().set_schedule(frequency, chunk)
    for field, value in [("steps", float("inf")), ("eval_tokens", 100.5), ("threads", 1.5), ("steps", 2.0)]:
        with pytest.raises(ValueError, match=f"PretrainConfig.{field} must be"):
            mr.PretrainConfig(**{field: value})
    with pytest.raises(RuntimeError, match=r"not attached to a model; call attach\(model\)"):
        mr.TTTEngine().update()
    rt = mr.MoERuntime(tiny)
    with pytest.raises(ValueError, match="no TTT engine"):
        rt.apply(mr.ControlAction(ttt_frequency_tokens=64))


def test_learning_rate_scales_with_chunk(tiny):
    engine = mr.TTTEngine(mr.TTTConfig(method="tent", lr=0.02, vector_lr=1e-3, lr_chunk_tokens=64))
    engine.attach(mr.MoETransformer(tiny).eval().requires_grad_(False))
    data = np.arange(300, dtype=np.uint8)
    engine.observe(data[:-1], data[1:])
    for freq, chunk, new in ((32, 32, 32), (256, 256, 256), (64, 256, 64), (256, 128, 128)):
        engine.set_schedule(freq, chunk)
        engine.update()
        muon, adamw = engine._optimizers
        assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * new / 64)
        assert adamw.param_groups[0]["lr"] == pytest.approx(1e-3 * new / 64)
    engine.observe(data[:200], data[1:201])  # 200 new tokens at 256 between updates; then the frequency drops to 32
    engine.set_schedule(32, 256)
    assert engine.tokens_until_due() == 0
    engine.update()  # overdue: it trains on the 200 new tokens, not on 32
    assert engine._optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02 * 200 / 64)


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "ttt_shift.json"
    cmd = [sys.executable, "benchmarks/ttt_shift.py", "--preset", "tiny", "--random-init", "--threads", "1"]
    cmd += ["--lead-in-tokens", "256", "--adapt-tokens", "2048", "--eval-every-tokens", "2048"]
    cmd += ["--heldout-tokens", "256", "--interval-tokens", "256", "--timing-rounds", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"post-shift loss: off [\d.]+, frequent-small [\d.]+, infrequent-large [\d.]+", last)
    report = json.loads(out.read_text())
    assert report["meta"]["source"] == "measured" and out.with_suffix(".png").stat().st_size > 0
    assert report["settings"]["off"]["updates"] == 0 and report["settings"]["frequent-small"]["updates"] == 9


# ----- the safeguards of one optimiser step: gradient clip, update-norm limit, LaCT column norms, token weights -----
CODE = b"def step(self, n):\n    total = n + 1\n    return total * 2\n" * 4


def attached_engine(cfg, chunk: int, **ttt) -> mr.TTTEngine:
    """An engine on a freshly initialised tiny model (seed 0) that has seen `chunk` (input, target) pairs of CODE."""
    torch.manual_seed(0)
    engine = mr.TTTEngine(mr.TTTConfig(chunk_tokens=chunk, lr_chunk_tokens=0, **ttt))
    engine.attach(mr.MoETransformer(cfg).eval().requires_grad_(False))
    data = np.frombuffer(CODE, dtype=np.uint8)[: chunk + 1]
    engine.observe(data[:-1], data[1:])
    return engine


def spy_gradients(engine: mr.TTTEngine) -> list[dict[str, torch.Tensor]]:
    """The adapted tensors' gradients as the optimisers get them (after clipping), one dict per optimiser step."""
    seen, optimizer = [], engine._optimizers[0]
    step = optimizer.step

    def spying_step(*args, **kwargs):
        seen.append({k: p.grad.detach().clone() for k, p in engine.params.items() if p.grad is not None})
        return step(*args, **kwargs)

    optimizer.step = spying_step
    return seen


def global_norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))


def test_one_step_changes_the_adapted_tensors_by_at_most_max_update_norm(tiny):
    """A learning rate far too large: the step is scaled back to norm `max_update_norm`, in the same direction."""
    limit, states = 0.05, {}
    for name, max_norm in (("free", 0.0), ("limited", limit)):
        engine = attached_engine(tiny, 64, method="lora", optimizer="muon", lr=5.0, max_update_norm=max_norm)
        before = engine.adapted_state()
        assert engine.update().applied
        after = engine.adapted_state()
        states[name] = {k: after[k] - before[k] for k in before}
    free = global_norm(states["free"].values())
    assert free > 20 * limit  # unlimited, the step is much larger
    assert global_norm(states["limited"].values()) == pytest.approx(limit, rel=1e-4)
    for k, d in states["limited"].items():
        torch.testing.assert_close(d, states["free"][k] * (limit / free), rtol=1e-4, atol=1e-7)


def test_fast_weights_keep_their_initial_column_norms(tiny):
    """LaCT: after every step W1 and W3 are rescaled to their initial column norms (W2 is free)."""
    engine = attached_engine(tiny, 64, method="fast_weights", lr=0.5, steps_per_update=3, max_update_norm=0.0)
    initial = engine.adapted_state()
    assert engine.update().applied
    after = engine.adapted_state()
    for layer in range(tiny.n_layers):
        for name in ("w1", "w3"):
            k = f"{layer}.{name}"
            assert (after[k] - initial[k]).abs().max() > 1e-2  # it moved, on a sphere per column:
            torch.testing.assert_close(after[k].norm(dim=0), initial[k].norm(dim=0), rtol=1e-5, atol=0)
        assert after[f"{layer}.w2"].norm() > 0  # W2 starts at zero and is not normalised


def test_gradients_are_clipped_to_grad_clip_in_the_same_direction(tiny):
    clip, grads = 1e-3, {}
    for name, grad_clip in (("free", 0.0), ("clipped", clip)):
        engine = attached_engine(tiny, 64, method="lora", optimizer="adamw", lr=1e-3, grad_clip=grad_clip)
        seen = spy_gradients(engine)
        assert engine.update().applied
        (grads[name],) = seen
    free = global_norm(grads["free"].values())
    assert free > 10 * clip  # the clip bites
    assert global_norm(grads["clipped"].values()) == pytest.approx(clip, rel=1e-4)
    for k, g in grads["clipped"].items():
        torch.testing.assert_close(g, grads["free"][k] * (clip / free), rtol=1e-4, atol=1e-10)


def test_a_chunk_of_unequal_batches_trains_on_the_token_weighted_loss(tiny):
    """An 80-token chunk on seq_len 32 is a [2, 32] batch and a [1, 16] remainder: the objective is the mean loss over
    the 80 tokens, so its gradient is autograd of sum(token losses) / 80 (not the sum of the two batch means)."""
    assert tiny.seq_len == 32
    engine = attached_engine(tiny, 80, method="lora", optimizer="adamw", grad_clip=0.0, max_update_norm=0.0)
    twin = attached_engine(tiny, 80, method="lora", optimizer="adamw", grad_clip=0.0, max_update_norm=0.0)
    seen = spy_gradients(engine)
    assert engine.update().applied
    data = torch.from_numpy(np.frombuffer(CODE, dtype=np.uint8)[:81].astype(np.int64))
    x, y = data[:-1], data[1:]
    total = 0.0
    for a, b, shape in ((0, 64, (2, 32)), (64, 80, (1, 16))):  # each batch its own context, as served
        logits = twin._adapted_forward(x[a:b].view(shape), None, record=False).logits
        total = total + F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y[a:b], reduction="sum")
    (total / 80).backward()
    (got,) = seen
    assert global_norm(got.values()) > 0
    for k, p in twin.params.items():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-8)
