"""HeadScores / TokenScores: labelling, ranking, long format, plotting and (atomic, validated) save/load."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from headscope.results import HeadScores, TokenScores


def _scores3d():
    v = np.arange(2 * 3 * 6, dtype=float).reshape(2, 3, 6)
    v[:, 1, 4] = np.nan  # all-NaN head: mean must stay NaN
    v[0, 2, 0] = np.nan  # one NaN prompt: mean over the other
    return HeadScores(
        v,
        name="induction",
        n_kv_heads=2,
        model="tiny",
        analyzer="induction",
        params={"seq_len": np.int64(20), "pair": (1, 2)},
        prompts=["a b", "c\nd"],
        description="prefix matching",
    )


def test_labels_and_kv_group_for_gqa():
    s = HeadScores(np.zeros((3, 6)), name="x", n_kv_heads=2)
    assert s.dims == ("layer", "head") and (s.n_layers, s.n_heads, s.n_kv_heads) == (3, 6, 2)
    assert s.kv_group.tolist() == [0, 0, 0, 1, 1, 1]
    assert s.labels.shape == (3, 6)
    assert s.labels[0, 0] == "L0H0" and s.labels[2, 5] == "L2H5" and s.labels[1, 3] == "L1H3"
    assert HeadScores(np.zeros((3, 6)), name="x").kv_group.tolist() == list(range(6))  # no GQA


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(values=np.zeros(6)), "dims"),
        (dict(values=np.zeros((0, 6))), "empty"),
        (dict(values=np.zeros((3, 6)), n_kv_heads=4), "n_kv_heads"),
        (dict(values=np.zeros((2, 3, 6)), prompts=["only one"]), "prompts"),
        (dict(values=[["a", "b"]]), "numeric"),
    ],
)
def test_input_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        HeadScores(name="x", **bad)


def test_top_orders_and_puts_nan_last():
    v = np.array([[0.5, np.nan, 0.9], [0.1, 0.7, -0.2]])
    s = HeadScores(v, name="x")
    top = s.top(k=10)
    assert list(top.columns) == ["rank", "label", "layer", "head", "kv_group", "score"]
    assert top["label"].tolist() == ["L0H2", "L1H1", "L0H0", "L1H0", "L1H2", "L0H1"]
    assert top["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert s.top(2)["label"].tolist() == ["L0H2", "L1H1"]
    low = HeadScores(v, name="x", higher_is_more=False).top(3)
    assert low["label"].tolist() == ["L1H2", "L1H0", "L0H0"]
    assert s.top(6, better="lower")["label"].tolist()[-1] == "L0H1"  # NaN last both ways
    assert s.top(6, better="magnitude")["label"].tolist() == ["L0H2", "L1H1", "L0H0", "L1H2", "L1H0", "L0H1"]
    with pytest.raises(ValueError, match="better='largest': use one of higher, lower, magnitude"):
        s.top(2, better="largest")
    with pytest.raises(ValueError, match="k"):
        s.top(0)


def test_three_d_uses_nan_aware_prompt_mean():
    s = _scores3d()
    m = s.mean_over_prompts()
    assert m.values.shape == (3, 6) and m.dims == ("layer", "head")
    assert np.isnan(m.values[1, 4])
    assert m.values[2, 0] == s.values[1, 2, 0]  # NaN prompt ignored
    assert s.score(0, 1) == pytest.approx((1 + 19) / 2)
    # L2H0 = 30 from its one valid prompt beats L2H5 = (17+35)/2; a NaN-propagating mean would rank it last
    assert s.top(1)["label"].item() == "L2H0"
    assert m.provenance == s.provenance
    with pytest.raises(ValueError, match="out of range"):
        s.score(3, 0)


def test_to_dataframe_long_format():
    s = _scores3d()
    df = s.to_dataframe()
    assert len(df) == 2 * 3 * 6
    assert list(df.columns) == ["prompt", "prompt_text", "layer", "head", "label", "kv_group", "score"]
    row = df[(df.prompt == 1) & (df.layer == 2) & (df["head"] == 4)].iloc[0]
    assert row.label == "L2H4" and row.kv_group == 1 and row.score == s.values[1, 2, 4]
    assert row.prompt_text == "c\nd"
    assert df.attrs["name"] == "induction" and df.attrs["n_kv_heads"] == 2
    df2 = s.mean_over_prompts().to_dataframe()
    assert list(df2.columns) == ["layer", "head", "label", "kv_group", "score"] and len(df2) == 18


def test_provenance_fields():
    p = _scores3d().provenance
    assert {
        "name",
        "analyzer",
        "params",
        "model",
        "headscope_version",
        "created",
        "n_kv_heads",
        "higher_is_more",
        "description",
    } <= p.keys()
    assert p["params"] == {"seq_len": 20, "pair": [1, 2]}  # normalised to JSON types
    assert p["created"].endswith("+00:00")


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
@pytest.mark.parametrize("make", [_scores3d, lambda: _scores3d().mean_over_prompts()])
def test_save_load_round_trip(tmp_path, suffix, make):
    s = make()
    path = s.save(tmp_path / f"scores{suffix}")
    back = HeadScores.load(path)
    assert back == s
    assert np.array_equal(np.isnan(back.values), np.isnan(s.values))
    assert back.provenance == s.provenance and back.prompts == s.prompts
    assert back.kv_group.tolist() == s.kv_group.tolist()
    assert [p.name for p in tmp_path.iterdir()] == [f"scores{suffix}"]  # no temp leftovers


def test_json_is_readable_with_null_for_nan(tmp_path):
    path = _scores3d().save(tmp_path / "s.json")
    doc = json.loads(path.read_text())
    assert doc["values"][0][1][4] is None and doc["provenance"]["model"] == "tiny"


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_is_atomic_when_writer_fails(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"s{suffix}"
    old = HeadScores(np.ones((2, 2)), name="old")
    old.save(path)
    before = path.read_bytes()

    def half_write_then_crash(p, *a, **k):
        Path(p).write_bytes(b"partial garbage")
        raise OSError("disk full")

    if suffix == ".json":
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: half_write_then_crash(self))
    else:
        import pyarrow.parquet as pq

        monkeypatch.setattr(pq, "write_table", lambda t, p, *a, **k: half_write_then_crash(p))
    with pytest.raises(OSError, match="disk full"):
        _scores3d().save(path)
    if suffix == ".json":
        monkeypatch.setattr(Path, "write_text", real)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert HeadScores.load(path) == old


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_load_truncated_file_raises_valueerror_naming_path(tmp_path, suffix):
    path = _scores3d().save(tmp_path / f"s{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as exc:
        HeadScores.load(path)
    # "(truncated or corrupted" is our wording: proves it is not a raw pyarrow/json error passing through
    assert str(path) in str(exc.value) and "(truncated or corrupted" in str(exc.value)


def test_load_rejects_wrong_schema(tmp_path):
    for i, text in enumerate(
        [
            '{"format": "something else"}',
            "[1, 2]",
            "",
            '{"format": "headscope.HeadScores", "values": [[1, 2], [3]], "provenance": {}, "shape": [2, 2]}',
        ]
    ):
        path = tmp_path / f"bad{i}.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=str(path)):
            HeadScores.load(path)
    plain = tmp_path / "plain.parquet"
    _scores3d().to_dataframe().drop(columns="prompt_text").to_parquet(plain)  # no headscope metadata
    with pytest.raises(ValueError, match="metadata"):
        HeadScores.load(plain)
    with pytest.raises(ValueError, match="suffix"):
        _scores3d().save(tmp_path / "s.csv")


def test_plot_heatmap_structure():
    s = _scores3d()
    fig = s.plot()
    assert isinstance(fig, go.Figure)
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    assert z.shape == (3, 6)
    assert np.allclose(z, s.mean_over_prompts().values, equal_nan=True)
    assert list(fig.layout.xaxis.ticktext) == [f"H{i}" for i in range(6)]
    assert list(fig.layout.yaxis.ticktext) == ["L0", "L1", "L2"]
    assert fig.layout.yaxis.autorange == "reversed"  # L0 at the top
    assert heat.colorbar.title.text == "induction"
    assert "induction" in fig.layout.title.text and "tiny" in fig.layout.title.text
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 2.5  # one KV-group boundary
    assert "KV group" in heat.hovertemplate and heat.customdata[1][4][0] == "L1H4"
    assert len(HeadScores(np.zeros((3, 6)), name="x").plot().layout.shapes) == 0


def test_reprs():
    s = _scores3d()
    assert "induction" in repr(s) and "(2, 3, 6)" in repr(s)
    h = s._repr_html_()
    assert "induction" in h and "tiny" in h and "seq_len" in h and "L2H5" in h and "<table" in h
    assert h.count("<tr>") >= 5 + 1


def test_token_scores_round_trip_and_views(tmp_path):
    t = TokenScores(
        [[0.1, np.nan, 0.3], [1.0, 2.0, np.nan]],
        tokens=[["A", " b", "\n"], ["x", "y"]],
        name="loss",
        model="tiny",
        prompts=["A b\n", "xy"],
    )
    df = t.to_dataframe()
    assert list(df.columns) == ["prompt", "prompt_text", "position", "token", "score"] and len(df) == 5
    back = TokenScores.load(t.save(tmp_path / "t.json"))
    assert back == t and np.isnan(back.values[0, 1])
    fig = t.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    one = TokenScores([1.0, 2.0], tokens=["a", " b"], name="loss")
    assert list(one.plot().layout.xaxis.ticktext) == ["a", "·b"]
    assert "loss" in one._repr_html_()
    with pytest.raises(ValueError, match="tokens"):
        TokenScores([1.0, 2.0], tokens=["a", "b", "c"], name="loss")
    with pytest.raises(ValueError, match=str(tmp_path / "t.json")):
        HeadScores.load(tmp_path / "t.json")  # a TokenScores file is the wrong schema


def test_results_and_viz_do_not_import_torch():
    code = "import sys, headscope.results, headscope.viz; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# ---- the one head ranking: results.rank_heads, select_heads on top of it ------------------------------


def _old_select(scores, *, threshold=None, top_k=None, top_fraction=None, largest=None):
    """select_heads as analyzers/base.py wrote it before the ranking moved to results.py."""
    mean = scores.mean_over_prompts().values if scores.values.ndim == 3 else scores.values
    sign = 1.0 if (scores.higher_is_more if largest is None else largest) else -1.0
    flat = np.where(np.isnan(mean), -np.inf, sign * mean).ravel()
    order = np.argsort(-flat, kind="stable")
    order = order[np.isfinite(flat[order])]
    if threshold is not None:
        order = order[flat[order] > sign * threshold]
    elif top_k is not None:
        order = order[: int(top_k)]
    else:
        order = order[: max(1, round(top_fraction * len(order)))]
    return [tuple(int(x) for x in np.unravel_index(i, mean.shape)) for i in order]


def _old_ranking(scores, rank):
    """experiments.conditions.ranking before it became results.rank_heads (rank: largest/smallest/magnitude)."""
    mean = scores.mean_over_prompts().values if scores.values.ndim == 3 else scores.values
    key = {"largest": -mean, "smallest": mean, "magnitude": -np.abs(mean)}[rank].ravel()
    order = np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")
    order = order[~np.isnan(key[order])]
    return [tuple(int(x) for x in np.unravel_index(i, mean.shape)) for i in order]


def test_rank_heads_is_both_former_rankings():
    from headscope import analyzers
    from headscope.results import rank_heads, select_heads

    assert analyzers.select_heads is select_heads  # the analyzers' name is the same function
    rng = np.random.default_rng(0)
    for trial in range(40):
        v = rng.normal(size=(3, 4, 5)).round(1)  # rounding makes ties
        v[rng.random(v.shape) < 0.1] = np.nan
        v[:, trial % 4, 1] = np.nan  # an unmeasured head
        for higher in (True, False):
            s = HeadScores(v if trial % 2 else v.mean(0), name="x", higher_is_more=higher)
            for rank, better in (("largest", "higher"), ("smallest", "lower"), ("magnitude", "magnitude")):
                assert rank_heads(s, better) == _old_ranking(s, rank)
            assert rank_heads(s) == rank_heads(s, "higher" if higher else "lower")
            for better, largest in ((None, None), ("higher", True), ("lower", False)):
                for kw in ({"threshold": 0.3}, {"threshold": -0.2}, {"top_k": 7}, {"top_fraction": 0.25}):
                    assert select_heads(s, better=better, **kw) == _old_select(s, largest=largest, **kw)


def test_rank_heads_nan_never_inf_ranked_and_errors():
    from headscope.results import rank_heads, select_heads

    s = HeadScores(np.array([[0.5, np.nan, np.inf], [-np.inf, 0.7, 0.1]]), name="x")
    assert rank_heads(s) == [(0, 2), (1, 1), (0, 0), (1, 2), (1, 0)]  # an infinite score is extreme, not unmeasured
    assert rank_heads(s, "lower") == [(1, 0), (1, 2), (0, 0), (1, 1), (0, 2)]
    assert select_heads(s, threshold=0.6) == [(0, 2), (1, 1)]
    with pytest.raises(ValueError, match="better='largest': use one of higher, lower, magnitude"):
        rank_heads(s, "largest")
    with pytest.raises(ValueError, match="exactly one of"):
        select_heads(s)
