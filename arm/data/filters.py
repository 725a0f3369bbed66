"""Filter decisions as SQL over the stats columns (built from `cfg.data.filters`).

Three kinds, applied in this order, each record getting at most one (the first) reason:

1. Predicates (stage "filter"): named SQL conditions over one stats row; for an edit they see
   both images (LEAST/GREATEST skip the NULL source columns of other tasks).
2. Exact duplicates (stage "dedup"): the same content id (task, image pixels, source image
   pixels, normalised texts); the first by input order is kept.
3. Near duplicates (stage "dedup"): a sample that would be an exact duplicate of an earlier one
   if near-identical images counted as one. Two different images are near-identical when their
   64-bit pHashes differ in <= `near_dup_phash_distance` bits AND their 8x8 RGB thumbnails differ
   by <= `near_dup_thumb_distance` in every cell (L-infinity, in [0, 1]). Candidate pairs come
   from LSH banding: the pHash is cut into distance+1 bands, so by pigeonhole any pair within the
   distance agrees exactly on at least one band and is found by equality joins; no O(N^2) join.
   The thumbnail check uses the maximum, not the mean: a re-encoded or resized photo moves every
   thumbnail cell by < 0.01, while two shapes scenes that differ by one small object differ by
   > 0.07 in the cells of that object yet by < 0.01 on average (measured on the tiny preset:
   the mean would have merged ~1,600 pairs of different scenes out of 1,566 images).
   Several samples of one image (different questions) are never near duplicates: their texts differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from arm.config import FilterConfig


@dataclass(frozen=True)
class Filter:
    reason: str
    predicate: str  # SQL over a stats row; true = reject
    detail: str  # SQL expression: the human-readable why


def _lit(x: float | int) -> str:
    # Config values are validated numbers; repr keeps full precision and cannot inject SQL.
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"filter threshold must be a number, got {x!r}")
    return repr(x)


MIN_SIDE = "least(width, height, source_width, source_height)"
MAX_ASPECT = (
    "greatest(greatest(width, height) / least(width, height),"
    " greatest(source_width, source_height) / least(source_width, source_height))"
)
MIN_STD = "least(pixel_std, source_pixel_std)"


def predicate_filters(f: FilterConfig) -> list[Filter]:
    return [
        Filter("too_small", f"{MIN_SIDE} < {_lit(f.min_side)}",
               f"printf('smallest side %d px < min_side %d', {MIN_SIDE}, {_lit(f.min_side)})"),
        Filter("bad_aspect", f"{MAX_ASPECT} > {_lit(f.max_aspect)}",
               f"printf('aspect %.3f > max_aspect %s', {MAX_ASPECT}, '{f.max_aspect}')"),
        Filter("blank_image", f"{MIN_STD} < {_lit(f.min_pixel_std)}",
               f"printf('pixel std %.3f < min_pixel_std %s', {MIN_STD}, '{f.min_pixel_std}')"),
        Filter("text_too_short", f"text_min_chars < {_lit(f.min_text_chars)}",
               f"printf('a required text has %d chars < min_text_chars %d', text_min_chars, {_lit(f.min_text_chars)})"),
        Filter("text_too_long", f"text_max_chars > {_lit(f.max_text_chars)}",
               f"printf('a text has %d chars > max_text_chars %d', text_max_chars, {_lit(f.max_text_chars)})"),
    ]


def bands(distance: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of distance+1 bands covering the hash: the fewest that still guarantee recall."""
    n = min(distance + 1, bits)
    widths = [bits // n + (1 if i < bits % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def apply_filters(con: duckdb.DuckDBPyConnection, f: FilterConfig) -> None:
    """Reads view `stats` and table `image_index` (sha256, phash, thumb); creates tables
    `kept` (ord of each surviving row) and `filtered` (ord, reason, detail, stage).

    Intermediate tables are narrow (ord, keys and hashes, never texts or meta), so memory
    follows the number of rows times ~0.4 kB, and DuckDB can spill them past its memory limit.
    """
    preds = predicate_filters(f)
    reason = "CASE " + " ".join(f"WHEN coalesce({p.predicate}, false) THEN '{p.reason}'" for p in preds) + " END"
    detail = "CASE " + " ".join(f"WHEN coalesce({p.predicate}, false) THEN {p.detail}" for p in preds) + " END"
    con.execute(f"""
        CREATE TEMP TABLE pred AS
        SELECT * FROM (SELECT ord, {reason} AS reason, {detail} AS detail FROM stats) WHERE reason IS NOT NULL""")
    con.execute("""
        CREATE TEMP TABLE pass1 AS
        SELECT ord, ref, task, id, text_sha, image_sha, source_image_sha FROM stats
        WHERE ord NOT IN (SELECT ord FROM pred)""")
    con.execute("""
        CREATE TEMP TABLE exact AS
        SELECT ord, first_ref FROM (
            SELECT ord, first_value(ref) OVER w AS first_ref, row_number() OVER w AS rn
            FROM pass1 WINDOW w AS (PARTITION BY id ORDER BY ord)
        ) WHERE rn > 1""")
    con.execute("CREATE TEMP TABLE pass2 AS SELECT * FROM pass1 WHERE ord NOT IN (SELECT ord FROM exact)")
    con.execute("DROP TABLE pass1")

    _near_duplicates(con, f)

    con.execute("""
        CREATE TEMP TABLE filtered AS
        SELECT ord, reason, detail, 'filter' AS stage FROM pred
        UNION ALL
        SELECT ord, 'duplicate', 'same content as ' || first_ref, 'dedup' FROM exact
        UNION ALL
        SELECT ord, 'near_duplicate', detail, 'dedup' FROM near""")
    con.execute("CREATE TEMP TABLE kept AS SELECT ord FROM pass2 WHERE ord NOT IN (SELECT ord FROM near)")
    con.execute("DROP TABLE pass2")


def _near_duplicates(con: duckdb.DuckDBPyConnection, f: FilterConfig) -> None:
    d, t = int(f.near_dup_phash_distance), float(f.near_dup_thumb_distance)
    # Each distinct image once, ordered by first use (a source image before its edit's target).
    con.execute("""
        CREATE TEMP TABLE nd_img AS
        SELECT u.sha, u.okey, i.phash, i.thumb FROM (
            SELECT sha, min(okey) AS okey FROM (
                SELECT image_sha AS sha, ord * 2 + 1 AS okey FROM pass2 WHERE image_sha IS NOT NULL
                UNION ALL
                SELECT source_image_sha, ord * 2 FROM pass2 WHERE source_image_sha IS NOT NULL
            ) GROUP BY sha
        ) u JOIN image_index i ON i.sha256 = u.sha""")
    band_rows = ", ".join(f"({i}, {shift}, {(1 << w) - 1})" for i, (shift, w) in enumerate(bands(d)))
    con.execute(f"""
        CREATE TEMP TABLE nd_band AS
        SELECT sha, okey, phash, b.band, (phash >> b.shift) & b.mask::UBIGINT AS key
        FROM nd_img, (VALUES {band_rows}) b(band, shift, mask)""")
    # The Hamming check runs inside the band join, so candidate pairs stream through it and only
    # pairs within the distance are kept (in the shapes world, a worst case of clustered hashes,
    # candidates outnumber near pairs by orders of magnitude).
    con.execute(f"""
        CREATE TEMP TABLE nd_pair AS
        WITH close AS (
            SELECT DISTINCT x.sha AS rep, y.sha AS dup, x.okey AS rep_okey,
                   bit_count(xor(x.phash, y.phash)) AS dist
            FROM nd_band x JOIN nd_band y ON x.band = y.band AND x.key = y.key AND x.okey < y.okey
            WHERE bit_count(xor(x.phash, y.phash)) <= {d}
        ), scored AS (
            SELECT c.*, list_max(list_transform(range(1, len(a.thumb) + 1),
                        lambda i: abs(a.thumb[i]::INTEGER - b.thumb[i]::INTEGER))) / 255.0 AS tdist
            FROM close c JOIN nd_img a ON a.sha = c.rep JOIN nd_img b ON b.sha = c.dup
        )
        SELECT * FROM scored WHERE tdist <= {t!r}""")
    # One level, not the transitive closure: an image maps to its earliest near-identical image.
    con.execute("""
        CREATE TEMP TABLE nd_canon AS
        SELECT dup AS sha, arg_min(rep, rep_okey) AS canon, arg_min(dist, rep_okey) AS dist,
               arg_min(tdist, rep_okey) AS tdist
        FROM nd_pair GROUP BY dup""")
    con.execute("""
        CREATE TEMP TABLE near AS
        WITH keyed AS (
            SELECT s.ord, s.ref, s.image_sha, s.source_image_sha,
                   ci.canon AS ci, ci.dist AS di, ci.tdist AS ti,
                   cs.canon AS cs, cs.dist AS ds, cs.tdist AS ts,
                   s.task, coalesce(ci.canon, s.image_sha) AS k_img,
                   coalesce(cs.canon, s.source_image_sha) AS k_src, s.text_sha
            FROM pass2 s
            LEFT JOIN nd_canon ci ON ci.sha = s.image_sha
            LEFT JOIN nd_canon cs ON cs.sha = s.source_image_sha
        ), ranked AS (
            SELECT *, row_number() OVER w AS rn, first_value(ref) OVER w AS first_ref,
                   first_value(image_sha) OVER w AS first_img, first_value(source_image_sha) OVER w AS first_src
            FROM keyed WINDOW w AS (PARTITION BY task, k_img, k_src, text_sha ORDER BY ord)
        )
        SELECT ord,
               CASE WHEN rn > 1 THEN
                   'same content as ' || first_ref || ' up to near-identical images: '
                   || concat_ws('; ',
                        CASE WHEN image_sha IS DISTINCT FROM first_img THEN
                             printf('image %s ~ %s', left(image_sha, 12), left(first_img, 12))
                             || coalesce(printf(' (pHash distance %d, thumbnail distance %.4f to %s)',
                                                di, ti, left(ci, 12)), '') END,
                        CASE WHEN source_image_sha IS DISTINCT FROM first_src THEN
                             printf('source image %s ~ %s', left(source_image_sha, 12), left(first_src, 12))
                             || coalesce(printf(' (pHash distance %d, thumbnail distance %.4f to %s)',
                                                ds, ts, left(cs, 12)), '') END)
               END AS detail
        FROM ranked WHERE rn > 1""")
