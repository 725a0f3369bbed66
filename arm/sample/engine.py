"""The generation engine: batched requests of mixed tasks over a transformers causal LM.

One loop serves plain and speculative decoding. Each step feeds, per request, the last accepted
token (not yet in the KV cache) followed by up to `jacobi_window` draft tokens, and reads the
next-token logits at every one of those positions in a single forward. The draw at output
position t uses the request's own Gumbel noise for t (see `choose`), so:

* window 0 is ordinary KV-cached decoding (one forward per token);
* window W > 0 is speculative Jacobi decoding (while the batch has at most `jacobi_max_rows`
  model rows: beyond that drafts cost more than they save): the token after the pending one is always
  accepted; each following one is accepted while the draft before it equals what the model
  drew there. Accepted tokens are exactly the tokens plain decoding would draw with the same
  noise (greedy or sampled): the speed-up is lossless by construction. Draws after the first
  mismatch become the next step's drafts (the Jacobi fixed-point iteration).

Classifier-free guidance adds, for each guided image request, an unconditional row that follows
the same tokens; cond and uncond rows run as one doubled batch (`cfg_mode="batch"`) or, as a
baseline, as two forwards (`cfg_mode="separate"`). Guidance only touches image positions.

`compile=True` decodes through a StaticCache (one per batch shape, reused across batches) and the
model's `torch.compile`d call (transformers' `get_compiled_call`; CUDA graphs on a GPU): the same
tokens, less per-step overhead once compiled, at the price of a compile per new batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import CompileConfig, StaticCache

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
    mode: Mode | None = None  # default: "image" when the prompt ends with an image head, else "text"


@dataclass
class Result:
    tokens: list[int]  # generated tokens, including the closing <eoi> / <eos> when reached
    mode: Mode
    finished: bool  # the closing token was produced (a text answer can hit max_new_tokens)
    grid: tuple[int, int] | None = None  # an image request's (h, w), from its prompt's image head

    def codes(self, layout: VocabLayout) -> torch.Tensor:
        """The h x w grid of image codes of an image request."""
        if self.mode != "image":
            raise ValueError("a text result has no image codes")
        h, w = self.grid or layout.grid
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


STATIC_BUCKET = 64  # static cache lengths are multiples of this
NOISE_BLOCK = 16  # noise rows drawn per call; part of a request's stream, so changing it changes samples


@dataclass
class _State:
    req: Request
    mode: Mode
    n_codes: int  # an image request's codes (h*w of its grid)
    length: int  # output positions it may produce
    last_needed: int  # last position whose token needs a forward
    generator: torch.Generator
    guided: bool
    noise_width: int  # the widest span the request draws from; a narrower span reads a prefix
    out: list[int] = field(default_factory=list)
    drafts: list[int] = field(default_factory=list)
    done: bool = False
    noise: torch.Tensor | None = None  # Gumbel rows for positions [noise_from, noise_from + len(noise))
    noise_from: int = 0

    def noise_at(self, t: int) -> torch.Tensor:
        """Gumbel noise [noise_width] of output position t: the same row whatever the batch or the window.

        Rows come from the request's own stream in position order, NOISE_BLOCK positions per draw
        (one kernel on the device instead of one per position); a position's row is the same
        however the rows are consumed, because the blocks are fixed by position alone."""
        while self.noise is None or t >= self.noise_from + len(self.noise):
            start = 0 if self.noise is None else self.noise_from + len(self.noise)
            block = gumbel(self.generator, NOISE_BLOCK, self.noise_width)
            # positions before the first uncommitted one are never read again
            keep = self.noise[max(len(self.out) - self.noise_from, 0):] if self.noise is not None else block[:0]
            self.noise_from, self.noise = start - len(keep), torch.cat([keep, block])
        return self.noise[t - self.noise_from]


class Engine:
    def __init__(
        self,
        model,
        layout: VocabLayout,
        *,
        use_cache: bool = True,
        cfg_mode: Literal["batch", "separate"] = "batch",
        jacobi_window: int = 0,
        jacobi_max_rows: int = 8,
        max_batch: int | None = None,
        compile: bool = False,
    ):
        if cfg_mode not in ("batch", "separate"):
            raise ValueError(f"cfg_mode must be 'batch' or 'separate', got {cfg_mode!r}")
        if jacobi_window < 0:
            raise ValueError(f"jacobi_window must be >= 0, got {jacobi_window}")
        if jacobi_max_rows < 1:
            raise ValueError(f"jacobi_max_rows must be >= 1, got {jacobi_max_rows}")
        self.model = model
        self.layout = layout
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.grammar = Grammar(layout, self.vocab_size, self.device)
        self.use_cache = use_cache
        self.cfg_mode = cfg_mode
        self.window = jacobi_window
        # drafts only pay while a forward is cheap for its batch: with many rows every draft column
        # costs real compute and the window loses (benchmarks/sample.py: x0.8-0.9 at 16-32 rows,
        # wins at 1-2); the output is the same either way
        self.jacobi_max_rows = jacobi_max_rows
        self.max_batch = max_batch
        self.compile = compile
        self._static: dict[tuple[int, int], StaticCache] = {}
        self.stats = Stats()  # totals over every run of this engine
        self.last_stats = Stats()  # the last batch

    # ------------------------------------------------------------------ public

    # no_grad, not inference_mode: RL samples with the policy it trains, and parameters touched in
    # inference mode (ZeRO-3 shards gathered for a forward, PEFT adapters) refuse autograd afterwards
    @torch.no_grad()
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
        if mode == "image" and self.grammar.mode_of(r.prompt) != "image":
            raise ValueError(f"request {i}: an image request's prompt must end with <boi> (and its grid token)")
        for name, ids in (("prompt", r.prompt), ("uncond_prompt", r.uncond_prompt or [])):
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                raise ValueError(f"request {i}: {name} has token ids outside [0, {self.vocab_size})")
        if r.temperature < 0 or r.top_k < 0 or not 0 < r.top_p <= 1 or r.cfg_scale < 0 or r.max_new_tokens < 1:
            raise ValueError(f"request {i}: invalid sampling settings {r}")
        if mode == "image" and r.cfg_scale != 1 and r.uncond_prompt is None:
            raise ValueError(f"request {i}: cfg_scale {r.cfg_scale} needs an uncond_prompt")
        if r.uncond_prompt is not None and mode == "image" and r.uncond_prompt[-1] != r.prompt[-1]:
            raise ValueError(f"request {i}: the uncond_prompt must end with the same image head")
        return mode

    def _state(self, i: int, r: Request) -> _State:
        mode = self._check(i, r)
        try:
            n_codes = self.grammar.image_codes(r.prompt) if mode == "image" else 0
        except ValueError as err:
            raise ValueError(f"request {i}: {err}") from None
        length = self.grammar.length(mode, r.max_new_tokens, n_codes)
        last_needed = n_codes - 1 if mode == "image" else length - 1
        gen = torch.Generator(device=self.device).manual_seed(int(r.seed))
        guided = mode == "image" and r.cfg_scale != 1 and r.uncond_prompt is not None
        return _State(r, mode, n_codes, length, last_needed, gen, guided, self.grammar.widest(mode))

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
                groups.append((self._rows(prompts, states), rows))

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
        return [Result(s.out, s.mode, s.done and self._closed(s), self._grid(s)) for s in states]

    def _grid(self, s: _State) -> tuple[int, int] | None:
        return (self.layout.grid_of_token(s.req.prompt[-1]) or self.layout.grid) if s.mode == "image" else None

    def _rows(self, prompts: list[list[int]], states: list[_State]) -> Rows:
        if not (self.compile and self.use_cache):
            return Rows(self.model, prompts, self.layout.pad, self.use_cache)
        # columns a batch can fill: prompt + every fed token + a window of drafts; rounded up so
        # that batches of similar prompts share one cache and one compiled graph
        need = max(len(p) for p in prompts) + max(s.length for s in states) + self.window + 1
        length = -(-need // STATIC_BUCKET) * STATIC_BUCKET
        key = (len(prompts), length)
        if key not in self._static:
            self._static[key] = StaticCache(config=self.model.config, max_cache_len=length)
        cache = self._static[key]
        cache.reset()
        # two step shapes: one token, or the pending token and a full window of drafts
        widths = (1, 1 + self.window) if self.window else (1,)
        return Rows(self.model, prompts, self.layout.pad, static=cache, decode=self._compiled(), widths=widths)

    def _compiled(self):
        # CUDA graphs replay a decode step without per-kernel launch cost; on CPU inductor fuses
        # the small ops between matmuls. dynamic=None: a second batch shape compiles one graph
        # with symbolic sizes instead of one per shape
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return self.model.get_compiled_call(CompileConfig(fullgraph=False, dynamic=None, mode=mode))

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
        window = self.window if len(row_of) <= self.jacobi_max_rows else 0

        # one flat batch of positions: (request, index into its fed columns)
        flat_req, flat_col = [], []
        for i in active:
            n_fed = 1 if first else 1 + len(states[i].drafts)
            flat_req += [i] * n_fed
            flat_col += list(range(n_fed))
        positions = [len(states[i].out) + c for i, c in zip(flat_req, flat_col)]
        drawn = self._draw(states, logits, row_of, flat_req, flat_col, positions)

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
            self._force(s)
            if not s.done:
                self._redraft(s, ys[accepted:], window)
        stats.tokens += sum(n_valid.values())
        if not first:
            for g, rows in groups:
                g.commit(torch.tensor([n_valid[i] for i, _ in rows], dtype=torch.long))

    def _draw(self, states, logits: torch.Tensor, row_of, flat_req, flat_col, positions) -> list[int]:
        """The token at every fed position: positions sharing a grammar span are drawn together,
        reading only that span of the logits (and of the noise)."""
        by_span: dict[tuple[int, int], list[int]] = {}
        spans = {}
        for n, (i, t) in enumerate(zip(flat_req, positions)):
            span = self.grammar.span(states[i].mode, t, states[i].n_codes)
            by_span.setdefault((span.lo, span.hi), []).append(n)
            spans[(span.lo, span.hi)] = span
        drawn = [0] * len(flat_req)
        dev = logits.device
        for key, members in by_span.items():
            span = spans[key]
            reqs = [states[flat_req[n]] for n in members]
            cols = torch.tensor([flat_col[n] for n in members], dtype=torch.long, device=dev)
            rows = torch.tensor([row_of[(flat_req[n], False)] for n in members], dtype=torch.long, device=dev)
            picked = logits[rows, cols, span.lo : span.hi].float()
            guided = [m for m, s in enumerate(reqs) if s.guided]
            if guided:
                g_idx = torch.tensor(guided, dtype=torch.long, device=dev)
                rows_u = torch.tensor([row_of[(flat_req[members[m]], True)] for m in guided], dtype=torch.long, device=dev)
                scale = torch.tensor([reqs[m].req.cfg_scale for m in guided], device=dev)
                picked[g_idx] = guide(picked[g_idx], logits[rows_u, cols[g_idx], span.lo : span.hi].float(), scale)
            noise = None
            if any(s.req.temperature > 0 for s in reqs):
                zeros = torch.zeros(span.width, device=dev)
                noise = torch.stack([
                    s.noise_at(positions[n])[: span.width] if s.req.temperature > 0 else zeros for s, n in zip(reqs, members)
                ])
            temp = torch.tensor([s.req.temperature for s in reqs], device=dev)
            top_k = torch.tensor([s.req.top_k for s in reqs], dtype=torch.long, device=dev)
            top_p = torch.tensor([s.req.top_p for s in reqs], device=dev)
            ids = (choose(picked, span.mask, noise, temp, top_k, top_p) + span.lo).tolist()
            for n, y in zip(members, ids):
                drawn[n] = y
        return drawn

    def _force(self, s: _State) -> None:
        """Append tokens the grammar leaves no choice about; they need no forward."""
        while not s.done:
            tok = self.grammar.forced(s.mode, len(s.out), s.n_codes)
            if tok is None:
                return
            t = len(s.out)
            s.out.append(tok)
            s.done = self.grammar.is_final(s.mode, tok, t, s.length)

    def _redraft(self, s: _State, guesses: list[int], window: int) -> None:
        """Drafts for positions len(out) .. ; only those whose successor still needs a forward."""
        n = min(window, max(s.last_needed - len(s.out), 0))
        drafts = guesses[:n]
        fill = drafts[-1] if drafts else s.out[-1]
        s.drafts = drafts + [fill] * (n - len(drafts))
