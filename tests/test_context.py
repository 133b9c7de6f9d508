"""The website's page builders (atlas.website.context, collect) on values made here, without rendering."""
from __future__ import annotations

import ast

import numpy as np

from atlas.website.collect import LayerSummary, strongest
from atlas.website.collect import strongest_units
from atlas.website.context import Renderer, example_unit, human_bytes, percent, python_string, tile


def summary(model="m", site="ffn", layer=3) -> LayerSummary:
    """Five units: 0 dead, 2 without a picture, 4 with only a probe (its strength is the dataset max)."""
    nan = float("nan")
    return LayerSummary(
        model=model, site=site, layer=layer, units=np.array([0, 1, 2, 7, 300]),
        activation=np.array([0.1, 2.0, nan, 0.5, nan]), data_max=np.array([0.0, 1.0, 9.0, 0.7, 3.0]),
        dead=np.array([True, False, False, False, False]),
        top_class=[None, ("cat", 0.6), None, ("dog", 0.2), None],
        pictures={"viz": np.array([True, True, False, True, False]), "fourier": np.array([False, True, False, False, False])},
        flags=[["dead"], ["class_selective", "local"], [], ["global"], []], extent=np.array([nan, 0.1, 0.2, 0.8, 0.3]),
        shards=[])


def test_numbers_as_pages_show_them():
    assert percent(0.425) == "42%" and percent(0.425, 1) == "42.5%"
    assert percent(float("nan")) == "–" and percent(float("inf")) == "–" and percent(None) == "–"
    assert [human_bytes(n) for n in (999, 1000, 1234567, 5e12, 7e15)] == ["999 B", "1.0 kB", "1.2 MB", "5.0 TB",
                                                                           "7000.0 TB"]


def test_python_string_is_a_literal_python_reads_back():
    for text in ['atlas & "co" <x>', "it's", "back\\slash", "tab\tnew\nline", "é ☃"]:
        assert ast.literal_eval(python_string(text)) == text


def test_a_tile_says_what_its_unit_has():
    t = tile(summary(), 1, "strongest")
    assert t["uid"] == "m/ffn/L03/U0001" and t["href"] == "unit.html#m/ffn/L03/U0001" and t["index"] == 1
    assert [p["part"] for p in t["pictures"]] == ["viz", "fourier"] and t["pictures"][1]["label"] == "Fourier"
    assert t["top_class"] == ("cat", 0.6) and t["share"] == 0.6 and t["flags"] == ["class_selective", "local"]
    assert t["layer_key"] == "ffn/3" and t["label"] == "strongest" and not t["dead"]
    empty = tile(summary(), 4)
    assert empty["pictures"] == [] and empty["share"] == 0.0 and empty["uid"] == "m/ffn/L03/U0300"


def test_strongest_units_are_ordered_by_picture_else_dataset_and_need_a_picture():
    s = summary()
    assert list(strongest(s)) == [2, 4, 1, 3, 0]       # 9.0 and 3.0 (dataset max), then 2.0, 0.5, 0.1
    assert strongest_units(s, 2) == [1, 3] and strongest_units(s, 10) == [1, 3, 0]


def test_the_example_unit_is_an_ffn_unit_and_its_permalink_uses_the_base_url():
    attn, ffn = summary(site="attn", layer=0), summary(layer=5)
    r = Renderer.__new__(Renderer)
    r.base_url = ""
    unit = example_unit({("m", "attn", 0): attn, ("m", "ffn", 5): ffn}, r)
    assert unit["uid"] == "m/ffn/L05/U0000" and unit["permalink"] == "https://host/atlas/site/unit.html#m/ffn/L05/U0000"
    r.base_url = "https://example.org/a/site/"
    assert example_unit({("m", "attn", 0): attn}, r)["permalink"] == "https://example.org/a/site/unit.html#m/attn/L00/U0000"


def test_the_atlas_url_is_the_base_url_without_the_website_folder():
    r = Renderer.__new__(Renderer)
    r.info = {"url": "https://spec.example/atlas/"}
    for base, want in [("https://h/x/site/", "https://h/x/"), ("https://h/x/site", "https://h/x/"),
                       ("https://h/x/", "https://h/x/"), ("", "https://spec.example/atlas/")]:
        r.base_url = base
        assert r.atlas_url() == want, base
