"""xsearch bench downstream: backbones from earlier bench-search rows, paired differences, the run itself (tiny)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from xsearch.bench.downstream import _searched_backbones, paired_differences
from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.search_spaces import get_space

SEARCH_ROWS = Path(__file__).resolve().parents[1] / "docs" / "bench" / "search_5M.json"


def _small():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=28)


def test_searched_backbones_take_seed_0_of_each_strategy_and_check_flops(tmp_path):
    rows = json.loads(SEARCH_ROWS.read_text())
    budget, archs = _searched_backbones(SEARCH_ROWS, _small())
    assert budget == "5M"
    assert set(archs) == {"danas", "spos", "random", "hand"}
    seed0 = next(r for r in rows if r["strategy"] == "danas" and r["search_seed"] == 0)
    assert archs["danas"][0] == seed0["arch"]
    first_random = next(r for r in rows if r["strategy"] == "random_distribution")
    assert archs["random"][0] == first_random["arch"]
    for arch, facts in archs.values():
        assert facts["classification_flops"] <= 5_000_000
    # a row whose FLOPs disagree with the space (another width, another size) is refused
    bad = [dict(r) for r in rows]
    bad[0]["flops"] = bad[0]["flops"] + 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="MACs"):
        _searched_backbones(path, _small())
    with pytest.raises(UserError, match="does not exist"):
        _searched_backbones(tmp_path / "missing.json", _small())


def test_paired_differences_match_a_hand_computation():
    danas = [30.0, 32.0, 31.0]
    hand = [28.0, 31.5, 27.0]
    rows = [{"part": "backbone", "budget": "5M", "task": "detection", "source": s, "seed": i, "box_ap": v / 100}
            for s, values in (("danas", danas), ("hand", hand)) for i, v in enumerate(values)]
    (line,) = paired_differences(rows)
    diffs = [a - b for a, b in zip(danas, hand)]  # 2.0, 0.5, 4.0
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(3)
    assert line[:4] == ["5M", "detection", "danas − hand", "3"]
    assert line[4] == f"{mean:+.2f} ± {se:.2f}"
    assert abs(mean - 2.1667) < 1e-3 and abs(se - 1.0138) < 1e-3


@pytest.mark.slow
def test_bench_downstream_from_search_rows_and_resume(tmp_path, fashion_coco, capsys):
    out = tmp_path / "rows.json"
    args = ["bench", "downstream", f"data.root={fashion_coco}", f"bench.downstream_searches=[{SEARCH_ROWS}]",
            "bench.downstream_tasks=[detection]", "bench.downstream_heads=false", "bench.seeds=2",
            "train.train_images=8", "train.epochs=1", "train.channels=32", "train.batch_size=8", "budget=smoke",
            f"runs_root={tmp_path / 'runs'}", f"out={out}", "progress=false"]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert sorted((r["source"], r["seed"]) for r in rows) == [(s, i) for s in ("danas", "hand", "random", "spos")
                                                             for i in (0, 1)]
    assert {r["budget"] for r in rows} == {"5M"}
    text = capsys.readouterr().out
    assert "danas − spos" in text and "danas − hand" in text
    assert main(args) == 0  # nothing left to train: the rows stay
    assert json.loads(out.read_text()) == rows


def test_table_lists_danas_first_and_the_paired_line():
    from xsearch.bench.downstream import format_downstream_table

    rows = [{"part": "backbone", "budget": "6M", "task": "detection", "source": s, "seed": i, "box_ap": v / 100,
             "box_ap50": v / 50, "flops": 1e8, "backbone_flops": 2e7, "train_seconds": 100.0}
            for s, values in (("spos", (30.0, 31.0)), ("danas", (32.0, 34.0))) for i, v in enumerate(values)]
    text = format_downstream_table(rows)
    assert text.index("| danas |") < text.index("| spos |")
    assert "| 6M | detection | danas − spos | 2 | +2.50 ± 0.50 |" in text
