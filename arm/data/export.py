"""`arm export-dataset`: the curated store as a Hugging Face `datasets` dataset (Parquet).

    OUT/README.md                              dataset card: configs (split -> files), dataset_info
    OUT/data/train-00000-of-00003.parquet      rows of one split, in the store's order
    OUT/data/val-00000-of-00001.parquet ...

The layout is the one the Hub and `datasets.load_dataset(OUT)` read with no loading script: each
Parquet file carries the `datasets` features in its schema metadata, so `image` and `source_image`
(the edit's input) come back as `datasets.Image` columns ({bytes, path}, decoded to PIL on access).
Rows are streamed from DuckDB in Arrow batches, with each batch's images fetched by hash from the
store's shards, so memory holds one batch whatever the store's size. Files are cut by bytes
(`max_shard_bytes` of image and text per file), computed in SQL first, since the `-of-N` names
need the count before the first row is written. The whole dir is written aside and renamed into
place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, Image, SplitDict, SplitInfo, Value
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from arm.data.store import SPLITS, CuratedStore
from arm.io import atomic_path, atomic_write_text

DATA_DIR = "data"
TEXT_COLUMNS = ("caption", "question", "answer", "instruction")
FEATURES = Features({
    "id": Value("string"),
    "source": Value("string"),
    "ref": Value("string"),
    "task": Value("string"),
    **{c: Value("string") for c in TEXT_COLUMNS},
    "image": Image(),
    "source_image": Image(),
    "meta": Value("string"),  # JSON (e.g. the shapes scene graph)
})

# Per row: its split, its file within the split (dense, by the bytes before it), and the columns.
# Text tasks have no image: a LEFT JOIN gives them 0 image bytes.
ROWS_SQL = """
WITH sized AS (
    SELECT s.*,
           coalesce(i.bytes, 0) + coalesce(si.bytes, 0) + coalesce(s.text_chars, 0) AS row_bytes
    FROM samples s
    LEFT JOIN images i ON i.sha256 = s.image_sha
    LEFT JOIN images si ON si.sha256 = s.source_image_sha
), placed AS (
    SELECT *, sum(row_bytes) OVER (PARTITION BY split ORDER BY ord ROWS UNBOUNDED PRECEDING) - row_bytes AS before
    FROM sized
)
SELECT split, dense_rank() OVER (PARTITION BY split ORDER BY floor(before / ?)) - 1 AS file,
       id, source, ref, task, caption, question, answer, instruction, image_sha, source_image_sha,
       CAST(meta AS VARCHAR) AS meta
FROM placed
"""

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

The curated ARM store (`arm curate`: decoded, filtered, deduplicated, split by image content) as
Parquet files in the `datasets` layout, written by `arm export-dataset`.

```python
from datasets import load_dataset

ds = load_dataset("{{ out }}")  # or the Hub repo id it was uploaded to
ds["train"][0]["image"]         # a PIL image
```

| split | rows | files |
|---|---|---|
{%- for split, rows, files in splits %}
| {{ split }} | {{ rows }} | {{ files }} |
{%- endfor %}

Columns: `task` (understand, generate, edit, text), `caption`, `question` + `answer`,
`instruction`, `image` (for `edit` the target), `source_image` (the edit's input), `source` and
`ref` (the input record it came from), `id` (the sample's content id) and `meta` (JSON).
"""


class ExportError(ValueError):
    """The store cannot be exported; the message names it and the reason."""


def _image_column(shas: list[str | None], blobs: dict[str, bytes]) -> list[dict[str, Any] | None]:
    return [None if s is None else {"bytes": blobs[s], "path": f"{s}.png"} for s in shas]


def export_dataset(store_root: str | Path, out: str | Path, *, max_shard_bytes: int = 256 << 20,
                   batch_rows: int = 1024) -> dict[str, Any]:
    """Write the curated store at `store_root` as a `datasets` Parquet dataset at `out`; returns
    {"out", "splits": {split: {"rows", "files"}}, "rows"}."""
    if max_shard_bytes <= 0 or batch_rows <= 0:
        raise ValueError(f"max_shard_bytes ({max_shard_bytes}) and batch_rows ({batch_rows}) must be positive")
    out = Path(out)
    with CuratedStore(store_root) as store:
        counts = store.con.execute(f"SELECT split, count(*), max(file) + 1 FROM ({ROWS_SQL}) GROUP BY split",
                                   [max_shard_bytes]).fetchall()
        if not counts:
            raise ExportError(f"{store_root}: the curated store holds no samples; nothing to export")
        unknown = sorted(str(s) for s, _, _ in counts if s not in SPLITS)
        if unknown:
            raise ExportError(f"{store_root}: samples in unknown split(s) {unknown}; known: {list(SPLITS)}")
        files = {s: int(n) for s, _, n in counts}
        rows = {s: int(n) for s, n, _ in counts}
        schema = FEATURES.arrow_schema  # carries the features as `huggingface` schema metadata
        with atomic_path(out) as tmp:
            (tmp / DATA_DIR).mkdir(parents=True)
            # a second cursor streams the rows while the store's own connection fetches the images
            cursor = store.con.cursor()
            reader = cursor.sql(ROWS_SQL + " ORDER BY split, ord", params=[max_shard_bytes]).to_arrow_reader(batch_rows)
            writer, key, nbytes = None, None, dict.fromkeys(rows, 0)
            try:
                for batch in reader:
                    cols = batch.to_pydict()
                    shas = sorted({s for c in ("image_sha", "source_image_sha") for s in cols[c] if s is not None})
                    blobs = dict(zip(shas, store.image_bytes(shas)))
                    table = pa.table({
                        **{c: cols[c] for c in ("id", "source", "ref", "task", *TEXT_COLUMNS)},
                        "image": _image_column(cols["image_sha"], blobs),
                        "source_image": _image_column(cols["source_image_sha"], blobs),
                        "meta": cols["meta"],
                    }, schema=schema)
                    # rows come ordered by (split, file): each file is one contiguous run
                    start = 0
                    for i in range(1, batch.num_rows + 1):
                        if i < batch.num_rows and (cols["split"][i], cols["file"][i]) == (cols["split"][start], cols["file"][start]):
                            continue
                        run = (cols["split"][start], int(cols["file"][start]))
                        if run != key:
                            if writer is not None:
                                writer.close()
                            split, k = run
                            writer = pq.ParquetWriter(tmp / DATA_DIR / f"{split}-{k:05d}-of-{files[split]:05d}.parquet", schema)
                            key = run
                        writer.write_table(table.slice(start, i - start))
                        nbytes[run[0]] += table.slice(start, i - start).nbytes
                        start = i
            finally:
                if writer is not None:
                    writer.close()
                cursor.close()
            atomic_write_text(tmp / "README.md", str(dataset_card(out, rows, files, nbytes)))
    return {"out": str(out), "rows": sum(rows.values()),
            "splits": {s: {"rows": rows[s], "files": files[s]} for s in SPLITS if s in rows}}


def dataset_card(out: Path, rows: dict[str, int], files: dict[str, int], nbytes: dict[str, int]) -> DatasetCard:
    """The dataset card: `configs` maps each split to its files (what the Hub and load_dataset
    read), `dataset_info` the features, row counts and Arrow sizes (datasets' own YAML for them)."""
    splits = [s for s in SPLITS if s in rows]
    data = DatasetCardData(
        pretty_name=out.name, task_categories=["text-to-image", "image-to-text", "visual-question-answering"],
        tags=["arm", "multimodal", "synthetic"],
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in splits]}],
    )
    info = DatasetInfo(features=FEATURES, splits=SplitDict({s: SplitInfo(name=s, num_examples=rows[s], num_bytes=nbytes[s]) for s in splits}))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return DatasetCard.from_template(data, template_str=CARD_TEMPLATE, name=out.name, out=str(out),
                                     splits=[(s, rows[s], files[s]) for s in splits])
