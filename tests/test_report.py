"""The reports a person reads, rendered from arm/templates/: the run report (headline first, raw
metrics collapsed last), the per-model eval report and the RL claims' Markdown, with one format
for a score and its interval and `dvc metrics show`'s flattening."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from report_inputs import eval_metrics, write_run

from arm.render import flatten_metrics, fmt_interval, fmt_mean_std


def test_a_score_and_its_interval_have_one_format():
    assert fmt_interval(0.41234, [0.38, 0.44491]) == "0.412 [0.380, 0.445]"
    assert fmt_interval(0.0123, [-0.004, 0.03], signed=True) == "+0.012 [-0.004, +0.030]"
    assert fmt_interval(0.5) == "0.500"
    assert fmt_interval(None, [0.1, 0.2]) == ""
    assert fmt_mean_std({"mean": -0.0333, "std": 0.01}, signed=True) == "-0.033 ± 0.010"
    assert fmt_mean_std({"mean": None, "std": None}) == "n/a"


def test_metrics_are_flattened_as_dvc_metrics_show_does():
    flat = flatten_metrics({"a": {"b": 1.5, "c": [1, 2], "d": {"e": True}}, "f": "x"})
    assert flat == {"a.b": 1.5, "a.c": "[1, 2]", "a.d.e": True, "f": "x"}


def section(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end, page.index(start))]


def test_run_report_opens_on_the_headline_and_ends_on_the_raw_metrics(tmp_path):
    from arm.report import build_report

    root = write_run(tmp_path / "run")
    index = build_report(root, tmp_path / "out")
    page = index.read_text()
    order = [page.index(marker) for marker in
             ('id="gate"', 'id="headline"', 'class="splits"', 'id="curves"', 'id="samples"', 'id="raw"')]
    assert order == sorted(order)
    headline = section(page, 'id="headline"', "</table>")
    # each model's main score on all held-out items with its interval, the floor, the reference, the gate
    assert ("<tr><td>shapes_geneval.overall</td><td>0.204 [0.154, 0.244]</td><td>0.304 [0.254, 0.344]</td>"
            "<td>0.100</td><td>0.900</td>") in headline
    assert "threshold ≥ 0.500: failed" in section(headline, "shapes_geneval.overall", "</tr>")
    assert "over_floor ≥ 0.200: passed" in section(headline, "understanding.vqa_accuracy", "</tr>")
    # a gated metric outside the headline list gets its row, with the check's note escaped
    gated = section(headline, "shapes_wise.color_accuracy", "</tr>")
    assert 'title="missing &lt;from&gt; candidate"' in gated and "threshold ≥ 0.300: failed" in gated
    assert "<th>arm-rl (candidate)</th>" in headline
    assert "gate: rejected" in section(page, 'id="gate"', "</p>")
    # the long tail is collapsed: every raw-metrics block is a closed <details>
    raw = page[page.index('id="raw"'):]
    assert raw.count('<details class="raw">') == 4 and "<details open" not in page
    assert "<tr><td>by_source.shapes.kept</td><td class=\"l\">900</td></tr>" in raw
    assert "metrics/eval_arm-rl.json" in raw
    # curves and grids are embedded: the page is one file
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 1 + 2
    with Image.open(tmp_path / "out" / "pretrain.png") as im:  # four metrics, four panels on their own scales
        assert im.size == (4 * 260, 190)


def test_the_rl_claims_evaluations_stay_out_of_the_headline(tmp_path):
    from arm.report import build_report

    root = write_run(tmp_path / "run")
    (root / "metrics" / "eval_claims_micro_both_s0_e0.json").write_text(
        json.dumps(eval_metrics("claims_micro_both_s0_e0", 0.3)))
    page = build_report(root, tmp_path / "out").read_text()
    assert "claims_micro" not in section(page, 'id="headline"', 'id="curves"')
    assert "<th>arm-base</th><th>arm-rl (candidate)</th><th>floor</th>" in page
    assert "metrics/eval_claims_micro_both_s0_e0.json" in page[page.index('id="raw"'):]


def test_run_report_without_evaluations_says_so(tmp_path):
    from arm.report import build_report

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "pretrain.json").write_text(json.dumps({"loss": 0.5}))
    page = build_report(tmp_path).read_text()
    assert "No model evaluated yet" in page and "gate: not run" in page
    assert "<tr><td>loss</td><td class=\"l\">0.5</td></tr>" in page


@pytest.mark.parametrize("name, text, message", [
    ("eval_arm-rl.json", "{", r"eval metrics .*eval_arm-rl\.json: invalid JSON"),
    ("eval_arm-rl.json", '{"model": "arm-rl"}', r"eval metrics .*eval_arm-rl\.json: no scores"),
    ("gate.json", '{"passed": true}', r"gate result .*gate\.json: no candidate, checks"),
    ("curate.json", "[1,", r"metrics .*curate\.json: invalid JSON"),
])
def test_a_broken_metrics_file_is_named_not_skipped(tmp_path, name, text, message):
    from arm.report import build_report

    root = write_run(tmp_path / "run")
    (root / "metrics" / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        build_report(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_report_renders_tables_grids_and_examples(tmp_path):
    from arm.eval.report import write_report
    from arm.eval.run import BenchResult, Grid

    metrics = eval_metrics("arm-<rl>", 0.0)
    cell = Image.new("RGB", (48, 48), (200, 30, 30))
    grid = Grid("geneval_colors", ["prompt", "sample"], rows=[[(cell, True), (cell, False)]], captions=["a red circle"])
    results = {"shapes_geneval": BenchResult(scores=metrics["scores"]["shapes_geneval"], grids=[grid]),
               "understanding": BenchResult(scores=metrics["scores"]["understanding"], examples=[
                   {"task": "vqa", "question": "is 2 < 3?", "answer": "yes", "reference": "yes", "correct": True},
                   {"task": "vqa", "question": "colour?", "answer": "red", "reference": "blue", "correct": False}])}
    folder = write_report(tmp_path / "eval_arm-rl", metrics, results, {"shapes_geneval": 1.5})
    page = (folder / "index.html").read_text()
    assert "<title>eval arm-&lt;rl&gt;</title>" in page
    # headline: novel, novel_composition, all held-out, oracle, then floor and reconstruction
    assert ("<tr><td>shapes_geneval.overall</td><td>0.200 [0.150, 0.240]</td><td>0.202 [0.152, 0.242]</td>"
            "<td>0.204 [0.154, 0.244]</td><td>0.206 [0.156, 0.246]</td><td>0.100</td><td>0.900</td></tr>") in page
    # all scores, normalized between floor and reconstruction: (0.204 - 0.1) / 0.8
    assert ("<td>shapes_geneval</td><td class=\"l\">overall</td><td><b>0.204 [0.154, 0.244]</b></td>"
            "<td>0.900</td><td>0.100</td><td>0.130</td>") in page
    assert "learned judge's own accuracy: clean.exact_scene 1, clean.color 0.99, train_seconds 12.5" in page
    assert "<img src=\"geneval_colors.png\" alt=\"geneval_colors\">" in page and "<li>a red circle</li>" in page
    assert '<tr class="ok"><td>vqa</td><td class="l">is 2 &lt; 3?</td>' in page
    assert '<tr class="bad"><td>vqa</td><td class="l">colour?</td>' in page
    with Image.open(folder / "geneval_colors.png") as im:
        assert im.size == (2 * (96 + 8) + 4, 14 + 96 + 8 + 4)


def test_claims_report_renders_each_claim_and_every_metric():
    from arm.rl.claims import render_report

    row = {"metric": "shapes_geneval.overall", "split": "novel", "judge": "judge",
           "base": {"mean": 0.35, "std": 0.0707, "n": 2}, "rl": {"mean": 0.55, "std": 0.0707, "n": 2},
           "delta": {"mean": 0.2, "std": 0.0, "n": 2}, "delta_interval": [0.165, 0.235]}
    result = {
        "preset": "micro", "seeds": [0], "eval_seeds": [0, 1], "base": "models/arm-base", "overrides": ["rl.steps=1"],
        "table": {"both": {"shapes_geneval.novel/overall": row}},
        "claims": {
            "a_rl_improves_targets": {"met": False, "checks": {
                "shapes_geneval.overall": {"delta": 0.2, "interval": [0.1, 0.3], "target": 0.0, "met": True},
                "understanding.vqa_accuracy": {"delta": None, "interval": None, "target": -0.02, "met": False}}},
            "b_cross_task_synergy": {"rl_on_edit": {
                "shapes_geneval.overall": {"delta": 0.05, "interval": [-0.01, 0.11], "claimed": False},
                "shapes_wise.score": {"delta": -0.05, "interval": [-0.08, -0.02], "claimed": True}}}},
    }
    lines = render_report(result).splitlines()
    assert "`arm rl --preset micro --set rl.seed=S --set rl.tasks=[...] --set rl.steps=1`" in lines[2]
    assert "## (a) RL improves its target tasks (novel split, learned judge): NOT met" in lines
    assert "- shapes_geneval.overall: change +0.200 [+0.100, +0.300], interval above +0: met" in lines
    assert "- understanding.vqa_accuracy: change n/a, change >= -0.02: not met" in lines
    assert ("- rl_on_edit: shapes_geneval.overall +0.050 [-0.010, +0.110] (no claim: interval spans 0), "
            "shapes_wise.score -0.050 [-0.080, -0.020] (claimed)") in lines
    assert lines[-1] == ("| both | shapes_geneval.overall | novel | judge | 0.350 ± 0.071 | 0.550 ± 0.071 "
                         "| +0.200 [+0.165, +0.235] |")
    assert lines[-3] == "| RL on | metric | split | judge | base | after RL | change [95% interval] |"
