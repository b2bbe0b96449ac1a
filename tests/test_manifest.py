"""Reading articles files: every accepted shape and every class of error."""

from __future__ import annotations

import textwrap

import pytest

from bulkgen_cli.input import manifest
from bulkgen_cli.core.errors import ManifestError
from bulkgen_cli.core.model import Mode
from tests.files import write_articles


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def yaml_items(n, field="topic", extra=""):
    return "".join(f"  - {field}: Item {i}\n{extra}" for i in range(1, n + 1))


def numbered(n, field="topic"):
    return [{field: f"Item {i}"} for i in range(1, n + 1)]


def problems(path, mode=None):
    with pytest.raises(ManifestError) as info:
        manifest.load(path, mode)
    return [str(p) for p in info.value.problems]


def test_yaml_mapping_with_defaults(tmp_path):
    path = write_articles(tmp_path / "a.yaml", numbered(10) + [{"topic": "Last", "word_count": 2000, "tone": "formal"}],
                          name="Demo", mode="topic", defaults={"tone": "casual", "word_count": 800})
    m = manifest.load(path)
    assert m.mode is Mode.topic and m.name == "Demo" and len(m.articles) == 11
    assert m.articles[0] == {"topic": "Item 1", "word_count": 800, "tone": "casual"}
    assert m.articles[10] == {"topic": "Last", "word_count": 2000, "tone": "formal"}


def test_story_wrapper_and_bare_list(tmp_path):
    wrapped = write(tmp_path, "w.yaml", "bulk_config:\n  mode: trends\n  items:\n" + yaml_items(10, "trend").replace("  -", "    -"))
    m = manifest.load(wrapped)
    assert m.mode is Mode.trends and m.articles[0]["trend"] == "Item 1" and m.name == "w"
    bare = write(tmp_path, "b.yml", yaml_items(10, "trend").replace("  -", "-"))
    assert manifest.load(bare, "trends").mode is Mode.trends
    # No mode anywhere: topic.
    assert manifest.load(write(tmp_path, "c.yaml", yaml_items(10).replace("  -", "-"))).mode is Mode.topic


def test_word_count_default_and_item_order(tmp_path):
    m = manifest.load(write_articles(tmp_path / "a.yaml", numbered(12)))
    assert [a["topic"] for a in m.articles] == [f"Item {i}" for i in range(1, 13)]
    assert all(a["word_count"] == 1000 for a in m.articles)


def test_merge_keys_and_bom_are_fine(tmp_path):
    path = tmp_path / "m.yaml"
    body = "items:\n" + "".join(f"  - {{<<: {{tone: calm}}, topic: T{i}}}\n" for i in range(10))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    m = manifest.load(path)
    assert m.articles[0] == {"topic": "T0", "word_count": 1000, "tone": "calm"}


def test_keywords_as_list_or_text(tmp_path):
    arts = [{"keywords": [f"a{i}", "b"]} for i in range(9)] + [{"keywords": "x; y, z"}]
    m = manifest.load(write_articles(tmp_path / "k.yaml", arts, mode="keywords"))
    assert m.articles[0]["keywords"] == ["a0", "b"] and m.articles[9]["keywords"] == ["x", "y", "z"]


def test_spin_needs_text_or_url(tmp_path):
    arts = [{"source_text": f"Text {i}"} for i in range(9)] + [{"tone": "calm"}]
    assert problems(write_articles(tmp_path / "s.yaml", arts, mode="spin")) == [
        f"{tmp_path}/s.yaml, item 10 (line 12): missing 'source_text' or 'source_url' (required in spin mode)."
    ]


def test_unknown_field_suggests_the_nearest(tmp_path):
    path = write_articles(tmp_path / "a.yaml", numbered(9) + [{"topic": "X", "word_cout": 900}])
    assert problems(path) == [f"{path}, item 10 (line 12), field 'word_cout': unknown field; did you mean 'word_count'?"]


def test_field_of_another_mode_is_explained(tmp_path):
    path = write_articles(tmp_path / "a.yaml", [{"keywords": [f"k{i}"]} for i in range(10)])
    found = problems(path)
    assert len(found) == 11  # the missing field once, not once per item
    assert found[0].endswith("no item has 'topic' (required in topic mode; in a CSV file, a 'topic' column).")
    assert "field 'keywords': belongs to mode 'keywords', but this bulk job's mode is 'topic'" in found[1]


def test_a_csv_file_without_the_modes_column_is_one_problem(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("title,word_count\n" + "".join(f"T{n},300\n" for n in range(11)))
    assert problems(path) == [f"{path}: no item has 'topic' (required in topic mode; in a CSV file, a 'topic' column)."]


@pytest.mark.parametrize(
    "line, message",
    [
        ("word_count: 50", "field 'word_count': must be a whole number from 100 to 10000, got 50."),
        ("word_count: abc", "field 'word_count': must be a whole number from 100 to 10000, got 'abc'."),
        ("word_count: true", "field 'word_count': must be a whole number from 100 to 10000, got True."),
        ("tone: ''", "field 'tone': must be non-empty text, got ''."),
        ("tone: [a]", "field 'tone': must be non-empty text, got ['a']."),
        ("extra: 5", "field 'extra': must be a mapping, passed to the content service as is."),
        ("extra: {$where: x}", "field 'extra': key '$where' starts with '$'"),
        ("extra: {a: {b.c: 1}}", "field 'extra': key 'b.c' contains '.'"),
        ("$set: 1", "key '$set' starts with '$'"),
        ("id: ''", "field 'id': must be a short non-empty text or number"),
    ],
)
def test_field_errors(tmp_path, line, message):
    path = write(tmp_path, "a.yaml", "items:\n" + yaml_items(9) + f"  - topic: X\n    {line}\n")
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}, item 10 (line 12)")
    assert message in found[0]


def test_source_url_must_be_http(tmp_path):
    arts = [{"source_url": f"https://e.com/{i}"} for i in range(9)] + [{"source_url": "file:///etc/passwd"}]
    assert "must be an http:// or https:// URL" in problems(write_articles(tmp_path / "s.yaml", arts, mode="spin"))[0]


def test_keywords_bounds(tmp_path):
    many = [f"k{i}" for i in range(21)]
    arts = [{"keywords": ["a"]} for _ in range(8)] + [{"keywords": many}, {"keywords": []}]
    found = problems(write_articles(tmp_path / "k.yaml", arts, mode="keywords"))
    assert [f.split(": ", 1)[1] for f in found] == [
        "needs 1 to 20 non-empty keywords, got 21.",
        "needs 1 to 20 non-empty keywords, got 0.",
    ]


def test_duplicate_ids(tmp_path):
    body = "items:\n" + "".join(f"  - {{topic: T{i}, id: a{i % 9}}}\n" for i in range(10))
    found = problems(write(tmp_path, "a.yaml", body))
    assert found == [f"{tmp_path}/a.yaml, item 10 (line 11), field 'id': id 'a0' is already used by item 1; ids must be unique."]


@pytest.mark.parametrize("n", [0, 9, 51])
def test_item_count(tmp_path, n):
    found = problems(write_articles(tmp_path / "a.yaml", numbered(n)))
    assert found[-1].startswith(f"{tmp_path}/a.yaml: has {n} items; a bulk job takes 10 to 50.")


def test_every_problem_is_reported_at_once(tmp_path):
    arts = [{"topic": f"T{i}", "word_count": i} for i in range(8)]
    found = problems(write_articles(tmp_path / "a.yaml", arts, mode="topic"))
    assert len(found) == 9  # eight bad word counts and the item count


def test_mode_conflicts_and_bad_mode(tmp_path):
    path = write_articles(tmp_path / "a.yaml", numbered(10, "trend"), mode="trends")
    assert problems(path, "topic") == [f"{path}: the file says mode 'trends' but --mode says 'topic'."]
    assert "--mode must be one of topic, keywords, trends, spin, got 'blog'." in problems(path, "blog")[0]
    bad = write_articles(tmp_path / "b.yaml", numbered(10), mode="blog")
    assert problems(bad) == [f"{bad}, line 1, field 'mode': mode must be one of topic, keywords, trends, spin, got 'blog'."]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("items: {a: 1}\n", "'items' must be a list"),
        ("just text\n", "'items' must be a list"),
        ("title: x\nitems: []\n", "unknown top-level key 'title'"),
        ("mode: topic\n", "has no 'items:' list"),
        ("items:\n  - topic: [unclosed\n", "is not valid YAML"),
        ("items:\n  - !!python/object/apply:os.system ['echo hi']\n", "unsupported YAML: tag tag:yaml.org,2002:python/object/apply:os.system is not allowed"),
        ("items:\n  - !!python/name:os.system {}\n", "is not allowed"),
        ("items: !!set {a, b}\n", "is not allowed"),
        ("items:\n  - topic: !custom x\n", "unsupported YAML"),
        ("items:\n" + "  - 5\n" * 10, "item 1 (line 2): must be a mapping of article fields"),
        ("items:\n  - {? [a, b] : 1}\n", "keys must be plain text"),
        ("\x00items: []\n", "is not valid YAML"),
    ],
)
def test_malformed_yaml(tmp_path, text, message):
    found = problems(write(tmp_path, "a.yaml", text))
    assert any(message in f for f in found), found


def test_alias_bomb_is_bounded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]")
    lines.append("items:")
    lines += [f"  - topic: T{i}" for i in range(9)]
    lines.append("  - {topic: X, extra: {bomb: *a8}}")
    found = problems(write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n"))
    assert len(found) == 1 and "aliases (*name) expand to more than 100,000 values" in found[0]


def test_deep_nesting_is_bounded(tmp_path):
    deep = "[" * 40 + "]" * 40
    body = "items:\n" + yaml_items(9) + f"  - topic: X\n    extra: {{a: {deep}}}\n"
    assert any("nests deeper than 32 levels" in f for f in problems(write(tmp_path, "d.yaml", body)))


def test_file_limits(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    assert "the limit is 1,048,576 (1 MiB)" in problems(big)[0]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"items:\n  - topic: caf\xe9\n")
    assert problems(latin) == [f"{latin}, line 2: is not UTF-8 text (byte 21 is 0xe9); save it as UTF-8."]
    assert problems(tmp_path / "missing.yaml") == [f"{tmp_path}/missing.yaml: no such file."]
    assert "unknown file type" in problems(write(tmp_path, "a.txt", "x"))[0]
    assert "is a folder" in problems(tmp_path.joinpath("dir.yaml").mkdir() or tmp_path / "dir.yaml")[0]


# -- CSV ------------------------------------------------------------------------


def csv_file(tmp_path, header, rows, name="a.csv"):
    return write(tmp_path, name, header + "\n" + "\n".join(rows) + "\n")


def test_csv_basic(tmp_path):
    arts = [{"topic": f"T{i}", "word_count": 800 + i, "tone": "casual"} for i in range(10)]
    m = manifest.load(write_articles(tmp_path / "a.csv", arts + [{"topic": "Quoted, with comma", "word_count": 1000}]))
    assert m.mode is Mode.topic and len(m.articles) == 11
    assert m.articles[0] == {"topic": "T0", "word_count": 800, "tone": "casual"}
    assert m.articles[10] == {"topic": "Quoted, with comma", "word_count": 1000}


def test_csv_keywords_mode_column_and_blank_lines(tmp_path):
    rows = [f'keywords,"k{i}; b, c"' for i in range(10)] + [",", ""]
    m = manifest.load(csv_file(tmp_path, "mode,keywords", rows))
    assert m.mode is Mode.keywords and m.articles[0]["keywords"] == ["k0", "b", "c"]
    assert len(m.articles) == 10


def test_csv_formula_cells_stay_text(tmp_path):
    rows = [f"=HYPERLINK(\"http://x/{i}\")" for i in range(10)]
    m = manifest.load(csv_file(tmp_path, "topic", rows))
    assert m.articles[0]["topic"] == '=HYPERLINK("http://x/0")'


def test_csv_errors_name_line_and_field(tmp_path):
    rows = [f"T{i},1000" for i in range(8)] + ['"multi\nline",abc', "T9,1000,extra-cell"]
    found = problems(csv_file(tmp_path, "topic,word_count", rows))
    assert found == [
        f"{tmp_path}/a.csv, item 9 (line 10), field 'word_count': must be a whole number from 100 to 10000, got 'abc'.",
        f"{tmp_path}/a.csv, item 10 (line 12): has 3 cells but the header has 2.",
    ]


def test_csv_header_errors(tmp_path):
    found = problems(csv_file(tmp_path, "topic,word_cout,,$x,topic", ["a,1,2,3,4"] * 10))
    assert [f.split(": ", 1)[1] for f in found] == [
        "unknown column 'word_cout'; did you mean 'word_count'?",
        "header column 3 is empty.",
        "key '$x' starts with '$', which is not allowed (it would be read as a database operator).",
        "column 'topic' appears twice.",
    ]


def test_csv_mixed_modes_refused(tmp_path):
    rows = [f"topic,T{i}" for i in range(9)] + ["trends,T9"]
    found = problems(csv_file(tmp_path, "mode,topic", rows))
    assert "mode 'trends' differs from mode 'topic' on line 2; one mode per bulk job." in found[0]


def test_csv_nul_and_wide_files(tmp_path):
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"topic\n" + b"a\x00b\n" * 10)
    assert problems(nul)  # refused with a message, not a traceback
    wide = csv_file(tmp_path, ",".join(f"c{i}" for i in range(100_000)), [], "wide.csv")
    found = problems(wide)
    assert len(found) == 1 and "has 100,000 unknown columns ('c0', 'c1'" in found[0]


def test_csv_extra_json(tmp_path):
    rows = [f'T{i},"{{""seo"": true}}"' for i in range(9)] + ['T9,not json']
    found = problems(csv_file(tmp_path, "topic,extra", rows))
    assert found == [f"{tmp_path}/a.csv, item 10 (line 11), field 'extra': must be a JSON object in a CSV cell, like {{\"seo\": true}}."]


def test_a_small_file_cannot_store_much_more_than_itself(tmp_path):
    """Review of issue 18, finding 7: `defaults.extra` copied into every item let a 12 KB file store ~10x itself."""
    shared = "x" * 12_000
    path = write_articles(tmp_path / "a.yaml", numbered(10), defaults={"extra": {"notes": shared}})
    assert path.stat().st_size < 16_000
    [problem] = problems(path)
    assert "as stored" in problem and "65,536 (64 KiB)" in problem, problem
    fine = write_articles(tmp_path / "b.yaml", numbered(10), defaults={"extra": {"notes": "x" * 5_000}})
    assert len(manifest.load(fine).articles) == 10  # ~50 KB stored: under the floor
