"""The run report as a person opens it: in headless Chromium at 1280x800, the headline table
(every model's main scores, floor, reference, the gate's checks) is whole above the fold, before
any raw metric, and the raw metrics stay collapsed until asked for."""

from __future__ import annotations

from report_inputs import write_run


def test_headline_is_above_the_fold_and_raw_metrics_are_collapsed(tmp_path, chromium):
    from arm.report import build_report

    index = build_report(write_run(tmp_path / "run"), tmp_path / "out")
    chromium.get(index.as_uri())
    viewport = chromium.execute_script("return window.innerHeight")
    assert viewport >= 600  # a 1280x800 window, less the browser's own frame
    top, bottom = chromium.execute_script(
        "const r = document.getElementById('headline').getBoundingClientRect(); return [r.top, r.bottom]")
    assert 0 < top < bottom < viewport
    rows = chromium.execute_script(
        "return [...document.querySelectorAll('#headline tr')].map(r => [...r.cells].map(c => c.innerText.trim()))")
    assert rows[0] == ["metric", "arm-base", "arm-rl (candidate)", "floor", "reference", "gate"]
    by_metric = {r[0]: r[1:] for r in rows[1:]}
    assert by_metric["shapes_geneval.overall"] == ["0.204 [0.154, 0.244]", "0.304 [0.254, 0.344]", "0.100", "0.900",
                                                   "threshold ≥ 0.500: failed"]
    assert by_metric["understanding.vqa_accuracy"][:2] == ["0.244 [0.194, 0.284]", "0.344 [0.294, 0.384]"]
    assert by_metric["shapes_wise.color_accuracy"] == ["", "", "", "", "threshold ≥ 0.300: failed"]
    assert len(rows) == 1 + 8 + 1  # the eight headline metrics and the gated attribute
    # the headline precedes every raw metric in the document, and the raw metrics are closed and unseen
    assert chromium.execute_script(
        "const h = document.getElementById('headline'); const raw = [...document.querySelectorAll('details.raw')];"
        "return raw.length === 4 && raw.every(d => !d.open && !d.querySelector('table').checkVisibility()"
        " && (h.compareDocumentPosition(d) & Node.DOCUMENT_POSITION_FOLLOWING))")
    # curves and grids load, curves before samples
    assert chromium.execute_script(
        "const imgs = [...document.images]; return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " && document.getElementById('curves').compareDocumentPosition(document.getElementById('samples'))"
        " & Node.DOCUMENT_POSITION_FOLLOWING")
    # opening a raw block shows its rows
    chromium.execute_script("document.querySelector('details.raw').open = true")
    assert chromium.execute_script("return document.querySelector('details.raw table').checkVisibility()")
