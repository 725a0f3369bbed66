"""Token-document shards: written once, then streamed per rank with bounded memory.

Layout of a shard dir (local path or `s3://`, reached through `arm.fs.fs_for`):

    <url>/<task>/part-00000.parquet, ...   columns id, text_ids, answer_ids, image, target_image,
                                           image_grid, target_grid ((h, w); null = the default grid)
    <url>/manifest.json                    per task its shards and their row-group sizes; written
                                           last, so a dir without it is unfinished and refused

A *unit* is one (shard, row group) of a task: the smallest thing a rank reads. In each epoch
of a task, its units are shuffled by (seed, task, epoch) - the same order on every rank - and
rank r takes the units at positions r, r + world, r + 2*world, ... Ranks therefore read
disjoint units whose union is the task. A task with fewer units than ranks cannot be split by
unit, so there every rank reads every unit and keeps the documents at positions r, r + world,
... of the epoch's document sequence: still disjoint and complete, at the cost of reading the
(small) task world times. Documents inside a unit are shuffled by (seed, task, epoch, unit).

`DocumentStream.rows` packs the training stream in *blocks*: a fixed quota of documents per
task (the mixture weights, `block_quotas`), CFG condition dropout drawn per document, best-fit
packing (`pack`), rows permuted, all drawn from the rank's own documents. Memory is one decoded row group per task plus one block of
documents, whatever the dataset's size. The stream state is a small JSON-able dict: for each
task the cursor (epoch, unit, document) at the start of the current block, the block index
and the rows of it already consumed, so resuming rebuilds that one block and skips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from arm.config import StorageConfig
from arm.fs import fs_for, is_remote, join
from arm.io import atomic_write_bytes
from arm.text.sequences import TASK_INDEX, TASKS, Example, Row, TokExample, block_quotas, document, pack
from arm.text.vocab import VocabLayout

MANIFEST = "manifest.json"
FORMAT = "arm-token-documents"
FORMAT_VERSION = 1
_IDS = pa.list_(pa.int32())
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text_ids", _IDS, nullable=False),
        pa.field("answer_ids", _IDS, nullable=False),
        pa.field("image", _IDS),  # null where the task has no input image
        pa.field("target_image", _IDS),  # null where the task has no target image
        # (h, w) of image / target_image; null: no image, or the layout's default grid. Shards
        # written before aspect buckets lack both columns, which reads as the default grid: a run
        # dir of square data stays valid (and resumable) across the change.
        pa.field("image_grid", _IDS),
        pa.field("target_grid", _IDS),
    ]
)
_LIST_COLUMNS = ("text_ids", "answer_ids", "image", "target_image", "image_grid", "target_grid")


# ----------------------------------------------------------------------------- writing


def _lists(table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each list column as (offsets, flat values, valid): document i is values[offsets[i]:offsets[i+1]]."""
    out = {}
    for c in _LIST_COLUMNS:
        if c not in table.column_names:  # an optional column a shard predates (the grids)
            continue
        arr = table.column(c).combine_chunks()
        values = arr.values.to_numpy(zero_copy_only=False)
        out[c] = (arr.offsets.to_numpy(), values, ~arr.is_null().to_numpy(zero_copy_only=False))
    return out


class _TaskWriter:
    """One task's open shard and its pending row group."""

    def __init__(self, fs, root: str, task: str, docs_per_shard: int, row_group_docs: int) -> None:
        self.fs, self.root, self.task = fs, root, task
        self.docs_per_shard, self.row_group_docs = docs_per_shard, row_group_docs
        self.shards: list[dict] = []
        self.buffer: dict[str, list] = {c: [] for c in SCHEMA.names}
        self.file = self.writer = None
        self.in_shard = 0
        self.hash = hashlib.sha256()

    def add(self, ex: TokExample) -> None:
        e = ex.example
        row = {"id": str(e.id), "text_ids": list(ex.text_ids), "answer_ids": list(ex.answer_ids),
               "image": None if e.image is None else list(e.image),
               "target_image": None if e.target_image is None else list(e.target_image),
               "image_grid": None if e.image_grid is None else list(e.image_grid),
               "target_grid": None if e.target_grid is None else list(e.target_grid)}
        for c, v in row.items():
            self.buffer[c].append(v)
        pending = len(self.buffer["id"])
        if pending == self.row_group_docs or self.in_shard + pending == self.docs_per_shard:
            self._flush()

    def _flush(self) -> None:
        n = len(self.buffer["id"])
        if not n:
            return
        if self.writer is None:
            rel = f"{self.task}/part-{len(self.shards):05d}.parquet"
            self.file = self.fs.open(join(self.root, rel), "wb")
            self.writer = pq.ParquetWriter(self.file, SCHEMA)
            self.shards.append({"path": rel, "documents": 0, "row_groups": []})
        try:
            table = pa.Table.from_pydict(self.buffer, schema=SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
            raise ValueError(f"task {self.task}: a document in {self.buffer['id'][:3]}...: {err}") from None
        self.writer.write_table(table, row_group_size=n)  # exactly one row group
        # content hash from the arrays, not per document: a Python-level hash would cost more
        # than the write itself at 10^7 documents
        self.hash.update(json.dumps(table.column("id").to_pylist()).encode())
        for arrays in _lists(table).values():
            for a in arrays:
                self.hash.update(np.ascontiguousarray(a).tobytes())
        shard = self.shards[-1]
        shard["documents"] += n
        shard["row_groups"].append(n)
        self.in_shard += n
        self.buffer = {c: [] for c in SCHEMA.names}
        if self.in_shard == self.docs_per_shard:
            self.close()

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.file.close()
            self.writer = self.file = None
            self.in_shard = 0

    def entry(self) -> dict:
        return {"documents": sum(s["documents"] for s in self.shards), "shards": self.shards,
                "sha256": self.hash.hexdigest()}


def write_documents(
    examples: Iterable[TokExample],
    url: str,
    *,
    storage: StorageConfig | None,
    docs_per_shard: int,
    row_group_docs: int,
    meta: dict,
) -> dict:
    """Writes `examples` as Parquet shards per task under `url`; returns the manifest.

    Streams: at most one pending row group per task is held, never the input. Any manifest
    already at `url` is removed first and the new one written last, so a reader never pairs
    a manifest with shards of another write.
    """
    if docs_per_shard < 1 or row_group_docs < 1:
        raise ValueError(f"docs_per_shard ({docs_per_shard}) and row_group_docs ({row_group_docs}) must be >= 1")
    fs, root = fs_for(url, storage)
    manifest_path = join(root, MANIFEST)
    if fs.exists(manifest_path):
        fs.rm(manifest_path)
    writers: dict[str, _TaskWriter] = {}
    for ex in examples:
        task = ex.example.task
        if task not in TASK_INDEX:
            raise ValueError(f"example {ex.example.id}: unknown task {task!r}; known: {TASKS}")
        if task not in writers:
            fs.makedirs(join(root, task), exist_ok=True)
            writers[task] = _TaskWriter(fs, root, task, docs_per_shard, row_group_docs)
        writers[task].add(ex)
    for w in writers.values():
        w.close()
    tasks = {t: writers[t].entry() for t in TASKS if t in writers}
    fingerprint = hashlib.sha256(json.dumps({t: e["sha256"] for t, e in tasks.items()}, sort_keys=True).encode())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "documents": sum(e["documents"] for e in tasks.values()),
        "bytes": sum(fs.size(join(root, s["path"])) for e in tasks.values() for s in e["shards"]),
        "fingerprint": fingerprint.hexdigest(),  # of the documents and their units: what a data position means
        "tasks": tasks,
        "meta": meta,
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if is_remote(url):
        fs.pipe_file(manifest_path, data)  # one PUT: the object appears whole or not at all
    else:
        atomic_write_bytes(manifest_path, data)
    return json.loads(data)  # as readers will see it (tuples in `meta` become lists)


def read_manifest(url: str, storage: StorageConfig | None = None) -> dict:
    fs, root = fs_for(url, storage)
    path = join(root, MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{url}: no {MANIFEST}; not a token-document dir, or its writing did not finish "
            f"(write_documents writes the manifest last)"
        )
    manifest = json.loads(fs.cat_file(path))
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{url}/{MANIFEST}: format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}")
    return manifest


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Unit:
    shard: str  # path relative to the dir
    row_group: int
    documents: int


class _RowGroup:
    """One decoded row group, kept as flat int32 arrays; documents are built one at a time."""

    def __init__(self, table: pa.Table, task: str) -> None:
        self.task = task
        self.ids = table.column("id").to_pylist()
        self.cols = _lists(table)

    def _ids(self, c: str, i: int) -> tuple[int, ...] | None:
        if c not in self.cols:
            return None
        offsets, values, valid = self.cols[c]
        return tuple(values[offsets[i]:offsets[i + 1]].tolist()) if valid[i] else None

    def example(self, i: int) -> TokExample:
        e = Example(self.ids[i], self.task, "train", image=self._ids("image", i),
                    target_image=self._ids("target_image", i), image_grid=self._ids("image_grid", i),
                    target_grid=self._ids("target_grid", i))
        return TokExample(e, self._ids("text_ids", i), self._ids("answer_ids", i))


class DocumentStream:
    """Rank `rank`'s share of a shard dir as documents and as packed rows (see module doc)."""

    def __init__(
        self,
        url: str,
        *,
        rank: int,
        world_size: int,
        layout: VocabLayout,
        seq_len: int,
        weights: Mapping[str, float],
        cfg_dropout: float,
        seed: int,
        block_docs: int,
        storage: StorageConfig | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.url, self.rank, self.world_size = url, rank, world_size
        self.layout, self.seq_len, self.cfg_dropout, self.seed = layout, seq_len, cfg_dropout, seed
        self.manifest = read_manifest(url, storage)
        self.fs, self.root = fs_for(url, storage)
        self.units = {
            t: [_Unit(s["path"], g, n) for s in e["shards"] for g, n in enumerate(s["row_groups"])]
            for t, e in self.manifest["tasks"].items()
        }
        pools = {t: e["documents"] for t, e in self.manifest["tasks"].items()}
        self.quotas = block_quotas(weights, pools, block_docs)
        for t in self.quotas:
            if pools[t] < world_size:
                raise ValueError(f"{url}: task {t} has {pools[t]} documents, fewer than world_size {world_size}: "
                                 f"some rank would have none (give it weight 0 or use fewer ranks)")
        self.too_long: dict[str, int] = {t: 0 for t in TASKS}  # documents skipped by this rank so far
        self._plans: dict[str, tuple[int, list[tuple[int, range]]]] = {}

    # ------------------------------------------------------------------ documents

    def _plan(self, task: str, epoch: int) -> list[tuple[int, range]]:
        """This rank's (unit index, positions kept in the shuffled unit) for one epoch of a task."""
        cached = self._plans.get(task)
        if cached and cached[0] == epoch:
            return cached[1]
        units = self.units[task]
        order = np.random.default_rng([self.seed, 3, TASK_INDEX[task], epoch]).permutation(len(units)).tolist()
        if len(units) >= self.world_size:
            plan = [(u, range(units[u].documents)) for u in order[self.rank::self.world_size]]
        else:
            plan, offset = [], 0
            for u in order:
                keep = range((self.rank - offset) % self.world_size, units[u].documents, self.world_size)
                if len(keep):
                    plan.append((u, keep))
                offset += units[u].documents
        self._plans[task] = (epoch, plan)  # the current epoch only: O(units / world) ints
        return plan

    def _read(self, task: str, u: int) -> _RowGroup:
        unit = self.units[task][u]
        # ranged reads of the footer and the one row group; no read-ahead cache to hold
        with self.fs.open(join(self.root, unit.shard), "rb", cache_type="none") as f:
            table = pq.ParquetFile(f).read_row_group(unit.row_group)
        if table.num_rows != unit.documents:
            raise ValueError(f"{self.url}/{unit.shard} row group {unit.row_group}: {table.num_rows} documents, "
                             f"the manifest says {unit.documents}")
        return _RowGroup(table, task)

    def documents(self, task: str, cursor: Mapping | None = None) -> Iterator[tuple[dict, TokExample]]:
        """This rank's documents of `task`, endlessly over epochs, each with the cursor after it.

        A cursor is {"epoch", "unit", "doc"}: the next document is position `doc` among those
        this rank keeps of the `unit`-th unit of its plan for `epoch`.
        """
        if task not in self.units:
            raise ValueError(f"{self.url}: no documents of task {task!r}; it has {sorted(self.units)}")
        epoch, u, d = (int(cursor[k]) for k in ("epoch", "unit", "doc")) if cursor else (0, 0, 0)
        while True:
            plan = self._plan(task, epoch)
            if not plan:
                raise ValueError(f"{self.url}: rank {self.rank} of {self.world_size} has no {task} documents in "
                                 f"epoch {epoch} (the task has {self.manifest['tasks'][task]['documents']})")
            for k in range(u, len(plan)):
                unit, keep = plan[k]
                if d >= len(keep):
                    d = 0
                    continue
                group = self._read(task, unit)
                shuffle = np.random.default_rng([self.seed, 4, TASK_INDEX[task], epoch, unit]).permutation(
                    self.units[task][unit].documents)
                for i in range(d, len(keep)):
                    yield {"epoch": epoch, "unit": k, "doc": i + 1}, group.example(int(shuffle[keep[i]]))
                d = 0
            epoch, u = epoch + 1, 0

    def _usable(self, task: str, cursor: Mapping) -> Iterator[tuple[dict, TokExample]]:
        """documents() without those longer than seq_len (counted in too_long).

        A rank's share of a task changes every epoch, so an epoch of only long documents is no
        error; reading the whole task world_size times over without a usable one is.
        """
        self.too_long[task] = int(cursor.get("too_long", 0))
        limit, skipped = self.world_size * self.manifest["tasks"][task]["documents"], 0
        for after, ex in self.documents(task, cursor):
            # the longest form of a document is its conditioned one
            if len(document(ex, self.layout)[0]) > self.seq_len:
                self.too_long[task] += 1
                skipped += 1
                if skipped > limit:
                    raise ValueError(f"{self.url}: rank {self.rank} read {skipped} {task} documents in a row, "
                                     f"every one longer than seq_len {self.seq_len}")
                continue
            skipped = 0
            yield {**after, "too_long": self.too_long[task]}, ex

    # ------------------------------------------------------------------ rows

    def initial_state(self) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "block": 0, "row": 0,
                "data": self.manifest["fingerprint"],
                "tasks": {t: {"epoch": 0, "unit": 0, "doc": 0, "too_long": 0} for t in self.quotas}}

    def _check(self, state: Mapping) -> None:
        if state["world_size"] != self.world_size:
            raise ValueError(
                f"the data position was saved with world_size {state['world_size']}, this run has world_size "
                f"{self.world_size}: each rank's documents depend on the world size, so the position cannot "
                f"carry over; resume with {state['world_size']} ranks or start a new run"
            )
        if state["rank"] != self.rank:
            raise ValueError(f"the data position belongs to rank {state['rank']}, this is rank {self.rank}")
        if state["data"] != self.manifest["fingerprint"]:
            raise ValueError(f"the data position was saved over other documents ({state['data'][:12]}) than "
                             f"{self.url} ({self.manifest['fingerprint'][:12]})")
        if set(state["tasks"]) != set(self.quotas):
            raise ValueError(f"the data position has tasks {sorted(state['tasks'])}, this stream draws "
                             f"{sorted(self.quotas)}")

    def rows(self, state: Mapping | None = None) -> Iterator[tuple[dict, Row]]:
        """Packed rows from `state` on (None: the start), each with the state after it."""
        state = self.initial_state() if state is None else json.loads(json.dumps(state))
        self._check(state)
        cursors = state["tasks"]
        readers = {t: self._usable(t, cursors[t]) for t in self.quotas}
        block, skip = state["block"], state["row"]
        head = {k: state[k] for k in ("world_size", "rank", "data")}
        while True:
            start = json.loads(json.dumps(cursors))
            rows = self._block(block, readers, cursors)
            for i in range(skip, len(rows)):
                if i + 1 < len(rows):
                    after = {**head, "block": block, "row": i + 1, "tasks": start}
                else:
                    after = {**head, "block": block + 1, "row": 0, "tasks": cursors}
                yield json.loads(json.dumps(after)), rows[i]
            block, skip = block + 1, 0

    def _block(self, block: int, readers: Mapping[str, Iterator], cursors: dict) -> list[Row]:
        """The rows of one block, drawing each task's quota from its reader (advances `cursors`)."""
        rng = np.random.default_rng([self.seed, 2, self.rank, block])
        docs = []
        for task, q in self.quotas.items():
            for _ in range(q):
                cursors[task], ex = next(readers[task])
                uncond = task in ("generate", "edit") and rng.random() < self.cfg_dropout
                ids, mask = document(ex, self.layout, uncond)
                docs.append((ids, mask, TASK_INDEX[task]))
        rows = pack(docs, self.seq_len, self.layout.pad)
        return [rows[i] for i in rng.permutation(len(rows))]  # long documents not always first
