"""Sampling engine: KV cache, grammar constraints, CFG, per-request seeds, speculative Jacobi decoding.

Exactness tests run the random model in float64 so that kernel rounding (different shapes of the
same computation in a batch or a speculative window) cannot flip a near-tie; the algorithms are
exact, float32 only adds ~1e-7 noise on logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

from arm.sample.choose import choose, filter_logits, gumbel
from arm.sample.engine import Engine, Request
from arm.sample.rows import Rows
from arm.text.formats import format_prompt
from arm.text.vocab import VocabLayout

LAYOUT = VocabLayout(n_text=40, codebook_size=45, grid=(3, 3), levels=(5, 3, 3))
IMG = [3, 14, 0, 44, 7, 7, 21, 30, 9]


def tiny_model(dtype=torch.float64, seed=0, vocab=LAYOUT.vocab_size):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5,
    )
    # a large init spread makes the random model's outputs depend strongly on context
    return LlamaForCausalLM(cfg).eval().to(dtype)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def gen(text, **kw):
    kw.setdefault("uncond_prompt", format_prompt("generate", LAYOUT, uncond=True))
    return Request(format_prompt("generate", LAYOUT, text=text), **kw)


def edit(text, **kw):
    return Request(
        format_prompt("edit", LAYOUT, image=IMG, text=text), format_prompt("edit", LAYOUT, image=IMG, uncond=True), **kw
    )


def ask(text, **kw):
    return Request(format_prompt("understand", LAYOUT, image=IMG, text=text), **kw)


def mixed():
    return [
        gen([1, 2, 3], cfg_scale=3.0, seed=1),
        ask([4, 5], temperature=0.0, max_new_tokens=7, seed=2),
        edit([7, 8, 9, 10, 11], cfg_scale=2.0, seed=3, top_k=8, top_p=0.9),
        gen([12], cfg_scale=1.0, temperature=0.7, seed=4, uncond_prompt=None),
        ask([], temperature=1.0, max_new_tokens=5, seed=5),
    ]


def tokens(engine, reqs):
    return [r.tokens for r in engine.run(reqs)]


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_kv_cache_logits_equal_recompute(dtype, tol, static):
    m = tiny_model(dtype)
    prompts = [format_prompt("generate", LAYOUT, text=[1, 2, 3, 4]), format_prompt("understand", LAYOUT, image=IMG, text=[5])]
    cache = StaticCache(config=m.config, max_cache_len=64) if static else None
    cached, full = Rows(m, prompts, LAYOUT.pad, use_cache=True, static=cache), Rows(m, prompts, LAYOUT.pad, use_cache=False)
    torch.testing.assert_close(cached.prefill(), full.prefill(), atol=tol, rtol=tol)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        k = 1 + step % 3  # one token, then speculative-style windows with rejected columns
        toks = torch.randint(0, LAYOUT.n_text, (2, k), generator=gen)
        valid = torch.ones(2, k, dtype=torch.bool)
        valid[1, k - 1:] = k == 1  # row 1 feeds a shorter window (padding columns)
        a, b = cached.extend(toks, valid), full.extend(toks, valid)
        for r in range(2):
            n = int(valid[r].sum())
            torch.testing.assert_close(a[r, :n], b[r, :n], atol=tol, rtol=tol)
        keep = torch.tensor([1, max(1, k - 1)]).clamp(max=valid.sum(1))
        cached.commit(keep)
        full.commit(keep)
    assert int(cached.cache.get_seq_length()) == cached.seq.shape[1]


def test_static_rows_keep_finished_rows_masked(model):
    """A static batch keeps its shape when rows finish: the others' logits match a DynamicCache batch."""
    prompts = [format_prompt("generate", LAYOUT, text=[1, 2]), format_prompt("understand", LAYOUT, image=IMG, text=[5]),
               format_prompt("generate", LAYOUT, text=[7, 8, 9])]
    static = Rows(model, prompts, LAYOUT.pad, static=StaticCache(config=model.config, max_cache_len=64), widths=(1, 3))
    dynamic = Rows(model, prompts, LAYOUT.pad)
    torch.testing.assert_close(static.prefill(), dynamic.prefill())
    toks = torch.tensor([[11], [12], [13]])
    for rows in (static, dynamic):
        rows.extend(toks, torch.ones(3, 1, dtype=torch.bool))
        rows.commit(torch.ones(3, dtype=torch.long))
        rows.select(torch.tensor([0, 2]))
    assert len(static) == len(dynamic) == 2 and static.seq.shape[0] == 3
    toks, valid = torch.tensor([[14, 15], [16, 17]]), torch.tensor([[True, True], [True, False]])
    a, b = static.extend(toks, valid), dynamic.extend(toks, valid)
    assert a.shape == b.shape  # padded to 3 columns for the forward, 2 returned
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1, :1], b[1, :1])
    for rows in (static, dynamic):
        rows.commit(torch.tensor([2, 1]))
    assert static.seq.shape[1] == dynamic.seq.shape[1]  # the padding column is trimmed again
    toks = torch.tensor([[18], [19]])
    a, b = static.extend(toks, torch.ones(2, 1, dtype=torch.bool)), dynamic.extend(toks, torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(a, b)


def test_left_padded_batch_matches_unpadded_reference(model):
    """Greedy engine output == a naive loop over the unpadded sequence with no cache at all."""
    reqs = [ask([4, 5, 6], temperature=0.0, max_new_tokens=6), gen([1], temperature=0.0), gen([2, 3, 4, 5, 6, 7, 8], temperature=0.0)]
    got = tokens(Engine(model, LAYOUT), reqs)
    for req, out in zip(reqs, got):
        seq = list(req.prompt)
        ref = []
        is_image = req.prompt[-1] == LAYOUT.boi
        for t in range(len(out)):
            if is_image and t == LAYOUT.tokens_per_image:
                ref.append(LAYOUT.eoi)
                break
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1]
            ids = torch.arange(logits.shape[0])
            ok = LAYOUT.is_image(ids) if is_image else (ids < LAYOUT.n_text) | (ids == LAYOUT.eos)
            y = int(logits.masked_fill(~ok, float("-inf")).argmax())
            ref.append(y)
            seq.append(y)
            if y == LAYOUT.eos:
                break
        assert out == ref


# ----------------------------------------------------------------------------- constraints


def test_image_spans_always_decode_to_valid_grids():
    m = tiny_model(torch.float32, seed=1)
    with torch.no_grad():  # make the model want everything but image codes
        m.lm_head.weight[: LAYOUT.image_offset] *= 50
        m.lm_head.weight[LAYOUT.eos] += 5
    reqs = [gen([i % 40], cfg_scale=1.0 + (i % 3), temperature=3.0, seed=i) for i in range(12)]
    reqs += [ask([i % 40], temperature=3.0, max_new_tokens=9, seed=i) for i in range(6)]
    for window in (0, 3):
        for res in Engine(m, LAYOUT, jacobi_window=window, jacobi_max_rows=64).run(reqs):
            t = torch.tensor(res.tokens)
            if res.mode == "image":
                assert len(res.tokens) == LAYOUT.tokens_per_image + 1 and res.finished
                assert bool(LAYOUT.is_image(t[:-1]).all()) and res.tokens[-1] == LAYOUT.eoi
                codes = res.codes(LAYOUT)
                assert codes.shape == LAYOUT.grid and int(codes.min()) >= 0 and int(codes.max()) < LAYOUT.codebook_size
            else:
                assert 1 <= len(res.tokens) <= 9
                assert bool(((t < LAYOUT.n_text) | (t == LAYOUT.eos)).all())
                assert LAYOUT.eos not in res.tokens[:-1]


def test_text_stops_at_eos():
    m = tiny_model(torch.float32, seed=2)
    req = ask([1], temperature=0.0, max_new_tokens=20)
    with torch.no_grad():  # point the <eos> row of the head at the prompt's last hidden state
        h = m.model(torch.tensor([req.prompt])).last_hidden_state[0, -1]
        m.lm_head.weight[LAYOUT.eos] = 100 * h / h.norm()
    res = Engine(m, LAYOUT).run([req])[0]
    assert res.tokens == [LAYOUT.eos] and res.finished


# ----------------------------------------------------------------------------- CFG


def test_cfg_doubled_batch_equals_two_passes(model):
    reqs = mixed()
    batched = Engine(model, LAYOUT, cfg_mode="batch")
    separate = Engine(model, LAYOUT, cfg_mode="separate")
    assert tokens(batched, reqs) == tokens(separate, reqs)
    assert separate.stats.forwards == 2 * batched.stats.forwards


def test_cfg_follows_the_formula_on_image_tokens_only(model):
    """Greedy CFG output == argmax over image codes of u + s(c - u), recomputed from scratch."""
    s = 2.5
    req = gen([5, 6], cfg_scale=s, temperature=0.0)
    out = tokens(Engine(model, LAYOUT), [req])[0]
    cond, unc = list(req.prompt), list(req.uncond_prompt)
    ids = torch.arange(LAYOUT.vocab_size)
    for t in range(LAYOUT.tokens_per_image):
        with torch.no_grad():
            c = model(torch.tensor([cond])).logits[0, -1]
            u = model(torch.tensor([unc])).logits[0, -1]
        y = int((u + s * (c - u)).masked_fill(~LAYOUT.is_image(ids), float("-inf")).argmax())
        assert out[t] == y
        cond.append(y)
        unc.append(y)
    assert out != tokens(Engine(model, LAYOUT), [gen([5, 6], cfg_scale=1.0, temperature=0.0)])[0]
    # text requests ignore guidance: same answer with or without a guided image request beside them
    q = ask([3], temperature=0.0, cfg_scale=4.0)
    assert tokens(Engine(model, LAYOUT), [q])[0] == tokens(Engine(model, LAYOUT), [req, q])[1]


# ----------------------------------------------------------------------------- seeds


def test_seed_results_independent_of_batch_composition(model):
    reqs = mixed()
    alone = [tokens(Engine(model, LAYOUT), [r])[0] for r in reqs]
    together = tokens(Engine(model, LAYOUT), reqs)
    reversed_ = tokens(Engine(model, LAYOUT), reqs[::-1])[::-1]
    chunked = tokens(Engine(model, LAYOUT, max_batch=2), reqs)
    assert alone == together == reversed_ == chunked
    other_seed = tokens(Engine(model, LAYOUT), [gen([1, 2, 3], cfg_scale=3.0, seed=99)])[0]
    assert other_seed != alone[0]


# ----------------------------------------------------------------------------- speculative Jacobi


@pytest.mark.parametrize("window", [1, 3, 8])
def test_jacobi_greedy_equals_plain_greedy(model, window):
    reqs = [gen([i, i + 1], cfg_scale=1.0 + i % 2 * 2, temperature=0.0, seed=i) for i in range(4)]
    reqs += [ask([i], temperature=0.0, max_new_tokens=12) for i in range(3)]
    plain = Engine(model, LAYOUT)
    jacobi = Engine(model, LAYOUT, jacobi_window=window, jacobi_max_rows=64)
    assert tokens(jacobi, reqs) == tokens(plain, reqs)
    assert jacobi.stats.steps <= plain.stats.steps and jacobi.stats.drafted > 0


def test_jacobi_turns_off_above_max_rows_with_the_same_output(model):
    reqs = [gen([i, i + 1], cfg_scale=1.0, temperature=1.0, seed=i, uncond_prompt=None) for i in range(4)]
    capped = Engine(model, LAYOUT, jacobi_window=3, jacobi_max_rows=3)
    assert tokens(capped, reqs) == tokens(Engine(model, LAYOUT), reqs)
    assert capped.stats.drafted == 0 and capped.stats.steps == LAYOUT.tokens_per_image
    assert tokens(capped, reqs[:3]) == tokens(Engine(model, LAYOUT), reqs[:3]) and capped.stats.drafted > 0


def test_jacobi_sampled_equals_plain_sampled_under_same_noise(model):
    reqs = mixed()
    assert tokens(Engine(model, LAYOUT, jacobi_window=3), reqs) == tokens(Engine(model, LAYOUT), reqs)


def test_jacobi_accepts_drafts_on_a_predictable_model():
    """A model whose output ignores the context lets Jacobi accept whole windows."""
    m = tiny_model(torch.float64, seed=3)
    with torch.no_grad():
        m.model.norm.weight.zero_()  # all logits 0: greedy picks the lowest allowed id every time
    req = gen([1], cfg_scale=1.0, temperature=0.0)
    plain, jac = Engine(m, LAYOUT), Engine(m, LAYOUT, jacobi_window=4)
    assert tokens(plain, [req]) == tokens(jac, [req]) == [[LAYOUT.image_offset] * 9 + [LAYOUT.eoi]]
    assert plain.stats.steps == 9 and jac.stats.steps == 3 and jac.stats.accepted_drafts == 6


@pytest.mark.slow
def test_compiled_static_engine_gives_the_same_tokens(model):
    """torch.compile + StaticCache decoding: token for token the eager engine's output, rows
    finishing at different times included, plain and speculative."""
    reqs = mixed()
    eager = tokens(Engine(model, LAYOUT), reqs)
    compiled = Engine(model, LAYOUT, compile=True, jacobi_window=3)
    assert tokens(compiled, reqs) == eager
    assert compiled.stats.drafted > 0


# ----------------------------------------------------------------------------- choose


def test_choose_filters_and_draws_from_the_distribution():
    gen = torch.Generator().manual_seed(0)
    n = 4000
    logits = torch.randn(1, 10, generator=gen).expand(n, 10)
    allowed = torch.ones(n, 10, dtype=torch.bool)
    allowed[:, 0] = False
    noise = gumbel(gen, n, 10)
    ones = torch.ones(n)
    drawn = choose(logits, allowed, noise, ones, torch.zeros(n, dtype=torch.long), ones)
    assert int((drawn == 0).sum()) == 0
    probs = logits[0].masked_fill(~allowed[0], float("-inf")).softmax(-1)
    freq = torch.bincount(drawn, minlength=10).double() / n
    assert float((freq - probs.double()).abs().max()) < 0.03
    greedy = logits[0].masked_fill(~allowed[0], float("-inf")).argmax()
    top1 = choose(logits, allowed, noise, ones, torch.ones(n, dtype=torch.long), ones)
    nucleus = choose(logits, allowed, noise, ones, torch.zeros(n, dtype=torch.long), ones * 1e-6)
    assert bool((top1 == greedy).all()) and bool((nucleus == greedy).all())
    hot = choose(logits, allowed, noise, ones * 50, torch.full((n,), 3, dtype=torch.long), ones)
    assert set(hot.tolist()) == set(logits[0].masked_fill(~allowed[0], -1e9).topk(3).indices.tolist())
    kept = filter_logits(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([3]), torch.tensor([1.0]))
    assert kept[0, :3].tolist() == [3.0, 2.0, 1.0] and kept[0, 3] < -1e30


# ----------------------------------------------------------------------------- noise


def test_noise_covers_only_the_grammar_span_on_the_logits_device(model, monkeypatch):
    """An image position draws float32 noise over the image codes only (not the vocabulary), on the
    logits' device; a text position over the text span (text ids .. <eos>), with <pad>/<bos> masked."""
    import arm.sample.engine as engine_mod

    seen = []

    def spy(logits, allowed, noise, *args):
        seen.append((logits, allowed, noise))
        return choose(logits, allowed, noise, *args)

    monkeypatch.setattr(engine_mod, "choose", spy)
    vocab = model.config.vocab_size
    Engine(model, LAYOUT).run([gen([1, 2], cfg_scale=3.0, seed=1)])
    assert len(seen) == LAYOUT.tokens_per_image
    for logits, allowed, noise in seen:
        assert noise.shape == (1, LAYOUT.codebook_size) and noise.shape[-1] < vocab
        assert noise.dtype == torch.float32 and noise.device == logits.device
        assert logits.shape[-1] == LAYOUT.codebook_size and allowed is None
    seen.clear()
    Engine(model, LAYOUT).run([ask([3], max_new_tokens=3, seed=2)])
    for logits, allowed, noise in seen:
        assert noise.shape == (1, LAYOUT.eos + 1) and noise.dtype == torch.float32
        assert allowed.tolist() == [True] * LAYOUT.n_text + [False, False, True]


def test_image_draws_are_codes_distributed_as_the_restricted_softmax():
    """Span-restricted Gumbel-max is still an exact sample of softmax(logits / T) over the image codes."""
    m = tiny_model(torch.float64, seed=3)
    target = torch.randn(LAYOUT.vocab_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hidden = m.config.hidden_size
    # a context-free model with logits == target: the final norm outputs a constant unit vector
    m.model.norm.register_forward_hook(lambda mod, inp, out: torch.ones_like(out) / hidden**0.5)
    with torch.no_grad():
        m.lm_head.weight.copy_(target.unsqueeze(1).expand(-1, hidden) / hidden**0.5)
    reqs = [gen([1], cfg_scale=1.0, temperature=0.5, seed=s, uncond_prompt=None) for s in range(300)]
    counts = torch.zeros(LAYOUT.codebook_size, dtype=torch.float64)
    for res in Engine(m, LAYOUT).run(reqs):
        counts += torch.bincount(res.codes(LAYOUT).flatten(), minlength=LAYOUT.codebook_size).double()
    probs = (target[LAYOUT.image_offset :] / 0.5).softmax(-1)
    assert float((counts / counts.sum() - probs).abs().max()) < 0.02


def test_noise_blocks_keep_long_outputs_batch_invariant_and_jacobi_lossless(model):
    """Outputs longer than one noise block: the same per seed alone, in a batch, and under Jacobi."""
    reqs = [ask([i], temperature=1.0, top_k=20, max_new_tokens=40, seed=10 + i) for i in range(3)]
    reqs.append(gen([4], cfg_scale=2.0, seed=20))
    alone = [tokens(Engine(model, LAYOUT), [r])[0] for r in reqs]
    assert max(len(t) for t in alone) > 16  # crosses a noise block boundary
    assert tokens(Engine(model, LAYOUT), reqs[::-1])[::-1] == alone
    assert tokens(Engine(model, LAYOUT, jacobi_window=5), reqs) == alone
