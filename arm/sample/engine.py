"""The generation engine: batched requests of mixed tasks over a transformers causal LM.

One loop serves plain and speculative decoding. Each step feeds, per request, the last accepted
token (not yet in the KV cache) followed by up to `jacobi_window` draft tokens, and reads the
next-token logits at every one of those positions in a single forward. The draw at output
position t uses the request's own Gumbel noise for t (see `choose`), so:

* window 0 is ordinary KV-cached decoding (one forward per token);
* window W > 0 is speculative Jacobi decoding: the token after the pending one is always
  accepted; each following one is accepted while the draft before it equals what the model
  drew there. Accepted tokens are exactly the tokens plain decoding would draw with the same
  noise (greedy or sampled): the speed-up is lossless by construction. Draws after the first
  mismatch become the next step's drafts (the Jacobi fixed-point iteration).

Classifier-free guidance adds, for each guided image request, an unconditional row that follows
the same tokens; cond and uncond rows run as one doubled batch (`cfg_mode="batch"`) or, as a
baseline, as two forwards (`cfg_mode="separate"`). Guidance only touches image positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from arm.sample.choose import choose, gumbel, guide
from arm.sample.constraints import Grammar, Mode
from arm.sample.rows import Rows
from arm.text.vocab import VocabLayout


@dataclass
class Request:
    """One sampling request. `prompt` is a context from `arm.text.formats.format_prompt`."""

    prompt: list[int]
    uncond_prompt: list[int] | None = None  # the same context with the condition replaced by <uncond>
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32  # text requests; an image request always yields h*w codes + <eoi>
    seed: int = 0
    mode: Mode | None = None  # default: "image" when the prompt ends with <boi>, else "text"


@dataclass
class Result:
    tokens: list[int]  # generated tokens, including the closing <eoi> / <eos> when reached
    mode: Mode
    finished: bool  # the closing token was produced (a text answer can hit max_new_tokens)

    def codes(self, layout: VocabLayout) -> torch.Tensor:
        """The h x w grid of image codes of an image request."""
        if self.mode != "image":
            raise ValueError("a text result has no image codes")
        h, w = layout.grid
        return layout.codes(torch.tensor(self.tokens[: h * w])).view(h, w)

    def text_ids(self, layout: VocabLayout) -> list[int]:
        return [t for t in self.tokens if t < layout.n_text]


@dataclass
class Stats:
    forwards: int = 0  # model calls (a separate-CFG step counts two)
    steps: int = 0  # sequential decoding steps (prefill included)
    tokens: int = 0  # tokens drawn from logits (forced ones excluded)
    drafted: int = 0  # draft tokens verified
    accepted_drafts: int = 0  # of which matched

    def add(self, other: "Stats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class _State:
    req: Request
    mode: Mode
    length: int  # output positions it may produce
    last_needed: int  # last position whose token needs a forward
    generator: torch.Generator
    guided: bool
    out: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    done: bool = False
    noise: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> Gumbel noise, until committed
    next_noise: int = 0

    def noise_at(self, t: int, vocab: int) -> torch.Tensor:
        # drawn in position order from the request's own stream: position t always gets the same noise
        while self.next_noise <= t:
            self.noise[self.next_noise] = gumbel(self.generator, vocab)
            self.next_noise += 1
        return self.noise[t]

    def forget_noise(self) -> None:
        for t in [t for t in self.noise if t < len(self.out)]:
            del self.noise[t]


class Engine:
    def __init__(
        self,
        model,
        layout: VocabLayout,
        *,
        use_cache: bool = True,
        cfg_mode: Literal["batch", "separate"] = "batch",
        jacobi_window: int = 0,
        max_batch: int | None = None,
    ):
        if cfg_mode not in ("batch", "separate"):
            raise ValueError(f"cfg_mode must be 'batch' or 'separate', got {cfg_mode!r}")
        if jacobi_window < 0:
            raise ValueError(f"jacobi_window must be >= 0, got {jacobi_window}")
        self.model = model
        self.layout = layout
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.grammar = Grammar(layout, self.vocab_size, self.device)
        self.use_cache = use_cache
        self.cfg_mode = cfg_mode
        self.window = jacobi_window
        self.max_batch = max_batch
        self.stats = Stats()  # totals over every run of this engine
        self.last_stats = Stats()  # the last batch

    # ------------------------------------------------------------------ public

    @torch.inference_mode()
    def run(self, requests: list[Request]) -> list[Result]:
        """Results in request order. Chunking into batches never changes a result."""
        results: list[Result] = []
        size = self.max_batch or max(len(requests), 1)
        # eval mode while sampling (no dropout), then back: RL samples from the model it trains
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(requests), size):
                results.extend(self._run_batch(requests[start : start + size]))
        finally:
            self.model.train(was_training)
        return results

    # ------------------------------------------------------------------ one batch

    def _check(self, i: int, r: Request) -> Mode:
        if not r.prompt:
            raise ValueError(f"request {i}: empty prompt")
        mode = r.mode or self.grammar.mode_of(r.prompt)
        if mode == "image" and r.prompt[-1] != self.layout.boi:
            raise ValueError(f"request {i}: an image request's prompt must end with <boi>")
        for name, ids in (("prompt", r.prompt), ("uncond_prompt", r.uncond_prompt or [])):
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                raise ValueError(f"request {i}: {name} has token ids outside [0, {self.vocab_size})")
        if r.temperature < 0 or r.top_k < 0 or not 0 < r.top_p <= 1 or r.cfg_scale < 0 or r.max_new_tokens < 1:
            raise ValueError(f"request {i}: invalid sampling settings {r}")
        if mode == "image" and r.cfg_scale != 1 and r.uncond_prompt is None:
            raise ValueError(f"request {i}: cfg_scale {r.cfg_scale} needs an uncond_prompt")
        if r.uncond_prompt is not None and mode == "image" and r.uncond_prompt[-1] != self.layout.boi:
            raise ValueError(f"request {i}: the uncond_prompt must end with <boi> too")
        return mode

    def _state(self, i: int, r: Request) -> _State:
        mode = self._check(i, r)
        length = self.grammar.length(mode, r.max_new_tokens)
        last_needed = self.layout.tokens_per_image - 1 if mode == "image" else length - 1
        gen = torch.Generator().manual_seed(int(r.seed))
        guided = mode == "image" and r.cfg_scale != 1 and r.uncond_prompt is not None
        return _State(r, mode, length, last_needed, gen, guided)

    def _run_batch(self, requests: list[Request]) -> list[Result]:
        states = [self._state(i, r) for i, r in enumerate(requests)]
        if not states:
            return []
        stats = Stats()
        # rows: every request's cond row, then one uncond row per guided request
        cond_rows = [(i, False) for i in range(len(states))]
        uncond_rows = [(i, True) for i, s in enumerate(states) if s.guided]
        layouts = [cond_rows + uncond_rows] if self.cfg_mode == "batch" else [cond_rows, uncond_rows]
        groups: list[tuple[Rows, list[tuple[int, bool]]]] = []
        pad = self.layout.pad
        for rows in layouts:
            if rows:
                prompts = [states[i].req.uncond_prompt if unc else states[i].req.prompt for i, unc in rows]
                groups.append((Rows(self.model, prompts, pad, self.use_cache), rows))

        logits = torch.cat([g.prefill() for g, _ in groups]).unsqueeze(1)  # [R, 1, V]
        stats.steps += 1
        stats.forwards += len(groups)
        self._advance(states, groups, logits, stats, first=True)

        while True:
            live = [(g, [(i, u) for i, u in rows if not states[i].done]) for g, rows in groups]
            keep = []
            for (g, rows), (_, alive) in zip(groups, live):
                if len(alive) < len(rows):
                    if alive:
                        idx = torch.tensor([rows.index(x) for x in alive], dtype=torch.long)
                        g.select(idx)
                keep.append((g, alive))
            groups = [(g, rows) for g, rows in keep if rows]
            if not groups:
                break
            k = 1 + max(len(states[i].drafts) for _, rows in groups for i, _ in rows)
            outs = []
            for g, rows in groups:
                tokens = torch.full((len(rows), k), pad, dtype=torch.long)
                valid = torch.zeros((len(rows), k), dtype=torch.bool)
                for r, (i, _) in enumerate(rows):
                    s = states[i]
                    seq = [s.out[-1], *s.drafts]
                    tokens[r, : len(seq)] = torch.tensor(seq)
                    valid[r, : len(seq)] = True
                outs.append(g.extend(tokens, valid))
            stats.steps += 1
            stats.forwards += len(groups)
            self._advance(states, groups, torch.cat(outs), stats, first=False)

        self.stats.add(stats)
        self.last_stats = stats
        return [Result(s.out, s.mode, s.done and self._closed(s)) for s in states]

    def _closed(self, s: _State) -> bool:
        end = self.layout.eoi if s.mode == "image" else self.layout.eos
        return bool(s.out) and s.out[-1] == end

    def _advance(self, states, groups, logits: torch.Tensor, stats: Stats, first: bool) -> None:
        """Draw every fed position, accept per request, update drafts and the cache validity."""
        row_of: dict[tuple[int, bool], int] = {}
        offset = 0
        for _, rows in groups:
            for r, key in enumerate(rows):
                row_of[key] = offset + r
            offset += len(rows)
        active = [i for i, s in enumerate(states) if not s.done and (i, False) in row_of]

        # one flat batch of positions: (request, index into its fed columns)
        flat_req, flat_col = [], []
        for i in active:
            n_fed = 1 if first else 1 + len(states[i].drafts)
            flat_req += [i] * n_fed
            flat_col += list(range(n_fed))
        rows_c = torch.tensor([row_of[(i, False)] for i in flat_req], dtype=torch.long, device=logits.device)
        cols = torch.tensor(flat_col, dtype=torch.long, device=logits.device)
        picked = logits[rows_c, cols].float()
        guided = [n for n, i in enumerate(flat_req) if states[i].guided]
        if guided:
            g_idx = torch.tensor(guided, dtype=torch.long, device=logits.device)
            rows_u = torch.tensor([row_of[(flat_req[n], True)] for n in guided], dtype=torch.long, device=logits.device)
            scale = torch.tensor([states[flat_req[n]].req.cfg_scale for n in guided], device=logits.device)
            picked[g_idx] = guide(picked[g_idx], logits[rows_u, cols[g_idx]].float(), scale)

        positions = [len(states[i].out) + c for i, c in zip(flat_req, flat_col)]
        allowed = torch.stack([self.grammar.allowed(states[i].mode, t) for i, t in zip(flat_req, positions)])
        dev = logits.device
        v = picked.shape[-1]
        noise = None
        if any(states[i].req.temperature > 0 for i in flat_req):
            zeros = torch.zeros(v)
            noise = torch.stack([
                states[i].noise_at(t, v) if states[i].req.temperature > 0 else zeros for i, t in zip(flat_req, positions)
            ]).to(dev)
        temp = torch.tensor([states[i].req.temperature for i in flat_req], device=dev)
        top_k = torch.tensor([states[i].req.top_k for i in flat_req], dtype=torch.long, device=dev)
        top_p = torch.tensor([states[i].req.top_p for i in flat_req], device=dev)
        drawn = choose(picked, allowed, noise, temp, top_k, top_p).tolist()

        n_valid = {}
        cursor = 0
        for i in active:
            s = states[i]
            n_fed = 1 if first else 1 + len(s.drafts)
            ys = drawn[cursor : cursor + n_fed]
            cursor += n_fed
            drafts = [] if first else s.drafts
            accepted = 0
            for j, y in enumerate(ys):
                t = len(s.out)
                s.out.append(y)
                accepted += 1
                if self.grammar.is_final(s.mode, y, t, s.length):
                    s.done = True
                    break
                if j < len(drafts) and drafts[j] == y:
                    continue
                break
            stats.drafted += len(drafts)
            stats.accepted_drafts += accepted - 1
            n_valid[i] = accepted
            s.forget_noise()
            self._force(s)
            if not s.done:
                self._redraft(s, ys[accepted:])
        stats.tokens += sum(n_valid.values())
        if not first:
            for g, rows in groups:
                g.commit(torch.tensor([n_valid[i] for i, _ in rows], dtype=torch.long))

    def _force(self, s: _State) -> None:
        """Append tokens the grammar leaves no choice about; they need no forward."""
        while not s.done:
            tok = self.grammar.forced(s.mode, len(s.out))
            if tok is None:
                return
            t = len(s.out)
            s.out.append(tok)
            s.done = self.grammar.is_final(s.mode, tok, t, s.length)

    def _redraft(self, s: _State, guesses: list[int]) -> None:
        """Drafts for positions len(out) .. ; only those whose successor still needs a forward."""
        n = min(self.window, max(s.last_needed - len(s.out), 0))
        drafts = guesses[:n]
        fill = drafts[-1] if drafts else s.out[-1]
        s.drafts = drafts + [fill] * (n - len(drafts))
