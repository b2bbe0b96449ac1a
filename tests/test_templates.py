"""Templates (templates.py, cli/templates.py): expansion, located problems, saved templates, submit --template."""

from __future__ import annotations

import json
import textwrap

import pytest

from bulkgen_cli.input import templates
from bulkgen_cli.core.errors import ManifestError, NameTaken, NotFound, UsageError
from bulkgen_cli.input.manifest import MAX_PROBLEMS
from bulkgen_cli.core.model import Mode, SaveOutcome
from tests.cli_helpers import EXAMPLES, env_for, run_cli, status_of

TEMPLATE = """\
name: City guides
defaults:
  tone: friendly
item:
  id: "{slug}"
  topic: "A weekend in {city}"
  word_count: "{words}"
  audience: "{audience}"
values:
  words: 1000
  audience: ~
"""


def rows_csv(n: int = 10, header: str = "slug,city,words,audience", row: str = "c{n},City {n},{words},") -> str:
    lines = [header] + [row.format(n=n, words=100 * n + 100) for n in range(1, n + 1)]
    return "\n".join(lines) + "\n"


def expand(template: str = TEMPLATE, values: str | None = None, fmt: str = "csv", **kw):
    return templates.expand(textwrap.dedent(template), rows_csv() if values is None else values, fmt,
                            template_source="t.yaml", values_source="rows." + fmt, **kw)


def problems(template: str = TEMPLATE, values: str | None = None, fmt: str = "csv", **kw) -> list[str]:
    with pytest.raises(ManifestError) as info:
        expand(template, values, fmt, **kw)
    assert info.value.subject == templates.OF_TEMPLATE_AND_ROWS
    return [str(p) for p in info.value.problems]


# -- expansion ---------------------------------------------------------------------------------------------


def test_one_item_per_row_with_typed_fields_defaults_and_the_template_name():
    parsed = expand()
    assert parsed.mode is Mode.topic and parsed.name == "City guides" and len(parsed.articles) == 10
    assert parsed.articles[0] == {"topic": "A weekend in City 1", "word_count": 200, "tone": "friendly", "id": "c1"}
    assert all(isinstance(a["word_count"], int) for a in parsed.articles)
    # An empty cell takes the default; a default of ~ leaves the field out.
    values = rows_csv().replace("c2,City 2,300,", "c2,City 2,,families")
    second = expand(values=values).articles[1]
    assert second["word_count"] == 1000 and second["audience"] == "families"


def test_yaml_rows_keep_their_types_and_fill_nested_fields():
    template = """\
    mode: keywords
    item:
      id: "{slug}"
      keywords: "{words}"
      word_count: "{size}"
      extra: {seo: "{seo}", note: "about {slug}", tags: ["{slug}", fixed]}
    """
    rows = "\n".join(f"- {{slug: s{n}, words: [a{n}, b], size: {200 + n}, seo: {{index: true}}}}" for n in range(10))
    parsed = expand(template, rows, "yaml")
    assert parsed.mode is Mode.keywords
    assert parsed.articles[3] == {"keywords": ["a3", "b"], "word_count": 203, "id": "s3",
                                  "extra": {"seo": {"index": True}, "note": "about s3", "tags": ["s3", "fixed"]}}


def test_csv_cells_are_read_as_the_field_they_fill():
    template = "mode: keywords\nitem:\n  keywords: '{kw}'\n  extra: '{meta}'\n  title: 'n° {n}'\n"
    values = "kw,meta,n\n" + "".join(f"alpha; beta {n},\"{{\"\"k\"\": {n}}}\",{n}\n" for n in range(10))
    first = expand(template, values).articles[0]
    assert first["keywords"] == ["alpha", "beta 0"] and first["extra"] == {"k": 0} and first["title"] == "n° 0"


def test_braces_escape_and_values_are_never_expanded_again():
    template = "item:\n  topic: '{{{city}}} in {{braces}}'\n  instructions: '{city}'\n"
    values = "city\n" + "".join(f"\"{{city}}{{x}}{{{{ {n}\"\n" for n in range(10))
    first = expand(template, values).articles[0]
    assert first["topic"] == "{{city}{x}{{ 0} in {braces}"
    assert first["instructions"] == "{city}{x}{{ 0"


def test_a_placeholder_used_over_and_over_cannot_blow_up():
    """A 100,000-character value used in 250 places of 50 rows would be 1.25e9 characters: refused early."""
    big = "x" * 100_000
    template = "item:\n  topic: '{t}'\n  extra:\n" + "".join(f"    k{n}: '{{v}}{{v}}'\n" for n in range(250))
    values = "- &row {t: a, v: " + big + "}\n" + "- *row\n" * 49
    found = problems(template, values, "yaml")
    assert any(f"more than {templates.MAX_EXPANDED:,} characters" in p for p in found)


# -- located problems -----------------------------------------------------------------------------------------


def test_unknown_placeholder_missing_value_and_unused_column_are_located():
    template = TEMPLATE.replace("{city}", "{cty}")
    values = rows_csv(header="slug,city,words,audience,notes", row="c{n},City {n},{words},,x")
    values = values.replace("c3,City 3", ",City 3")
    found = problems(template, values)
    assert "t.yaml, line 6, field 'topic': {cty} is not a column of rows.csv and 'values:' gives it no default; " \
           "did you mean {city}?" in found
    assert any(p.startswith("rows.csv, line 1, column 'notes': no placeholder of the template uses this column")
               for p in found)
    assert any(p.startswith("rows.csv, line 1, column 'city': no placeholder") for p in found)
    # The missing slug is a row problem; it is found once the template is right.
    found = problems(values=values.replace(",notes", "").replace(",x\n", "\n"))
    assert found == ["rows.csv, row 3 (line 4), column 'slug': no value for {slug}: its cell is empty, and the "
                     "template's 'values:' gives no default."]


def test_a_row_that_makes_an_invalid_item_names_row_line_column_and_field():
    values = rows_csv().replace("c4,City 4,500,", "c4,City 4,lots,").replace("c7,", "c1,")
    assert problems(values=values) == [
        "rows.csv, row 4 (line 5), column 'words', field 'word_count': must be a whole number from 100 to 10000, "
        "got 'lots'.",
        "rows.csv, row 7 (line 8), column 'slug', field 'id': id 'c1' is already used by row 1; ids must be unique.",
    ]


def test_a_field_made_of_several_placeholders_names_them():
    template = "item:\n  topic: '{a} and {b}'\n"
    values = "a,b\n" + "".join(f"{'x' * 600},{'y' * 600}\n" for _ in range(10))
    found = problems(template, values)
    assert found[0] == ("rows.csv, row 1 (line 2), field 'topic': is 1,205 characters; at most 1,000 are allowed. "
                        "(filled from {a}, {b})")


def test_yaml_rows_are_located_by_row_and_key():
    rows = "\n".join(f"- {{slug: s{n}, city: C{n}, words: {200 + n}}}" for n in range(10))
    rows = rows.replace("{slug: s2, city: C2,", "{slug: s2,").replace("words: 205}", "words: 205, extra: 1}")
    found = problems(values=rows, fmt="yaml")
    assert found == [
        "rows.yaml, row 3 (line 3), column 'city': no value for {city}: this row has none, and the template's "
        "'values:' gives no default.",
        "rows.yaml, row 6 (line 6), column 'extra': no placeholder of the template uses this column. Remove it, "
        "or use it in the template's 'item:'.",
    ]


def test_a_quoted_number_in_yaml_rows_is_said_to_be_text():
    rows = "\n".join(f"- {{slug: s{n}, city: C{n}, words: '{1200 + n}'}}" for n in range(10))
    found = problems(values=rows, fmt="yaml")
    assert found[0] == ("rows.yaml, row 1 (line 1), column 'words', field 'word_count': must be a whole number from "
                        "100 to 10000, got the quoted text '1200': write it without quotes (1200).")


def test_the_template_is_checked_on_its_own_first():
    template = """\
    name: Guides for {city}
    defaults:
      tone: "{tone}"
    item:
      id: fixed
      topic: "A weekend in {city"
      word_cout: 1200
      word_count: "{words}"
    values:
      words: 50
      colour: red
    """
    with pytest.raises(ManifestError) as info:
        templates.check(textwrap.dedent(template), source="t.yaml")
    found = [str(p) for p in info.value.problems]
    assert info.value.subject == "the template"
    assert found == [
        "t.yaml, line 1, field 'name': holds {city}, but a bulk job has one name, not one per row: write it without "
        "placeholders (or --name NAME; {{ and }} are literal braces).",
        "t.yaml, line 3, field 'tone': in 'defaults': holds a placeholder; defaults are the same for every row, so "
        "placeholders go in 'item:'.",
        "t.yaml, line 5, field 'id': must hold a placeholder, such as \"{slug}\": ids are unique per item, and a "
        "template makes one item per row.",
        "t.yaml, line 6, field 'topic': has a single '{' at character 14; write '{{' for a literal brace, or {name} "
        "for a placeholder.",
        "t.yaml, line 7, field 'word_cout': unknown field; did you mean 'word_count'?",
        "t.yaml, line 10, field 'word_count': must be a whole number from 100 to 10000, got 50.",
        "t.yaml, line 11: in 'values': no field of 'item:' uses {colour}.",
    ]


def test_required_field_and_bad_placeholder_names():
    assert templates.check("item:\n  topic: '{t} {u-2} {t}'\n", source="t.yaml").placeholders == ["t", "u-2"]
    with pytest.raises(ManifestError) as info:
        templates.check("mode: spin\nitem:\n  tone: '{1st} {ok}'\n", source="t.yaml")
    found = [str(p) for p in info.value.problems]
    assert "t.yaml, line 3, field 'tone': '{1st}' is not a placeholder: a name is letters, digits, '_' and '-', " \
           "starting with a letter or '_' (write {{ and }} for literal braces)." in found
    assert "t.yaml: 'item' has no 'source_text' or 'source_url' (required in spin mode)." in found


def test_the_count_rule_applies_to_rows_and_split_lifts_it():
    assert problems(values=rows_csv(9)) == ["rows.csv: has 9 rows; a bulk job takes 10 to 50 (one article per row)."]
    assert problems(values=rows_csv(51))[0].endswith("Use --split to make several bulk jobs of them.")
    assert len(expand(values=rows_csv(120, row="c{n},City {n},500,"), split=True).articles) == 120


def test_problems_stop_at_max_problems():
    values = rows_csv(300, row="c{n},City {n},lots,")
    found = problems(values=values, split=True)
    assert len(found) == MAX_PROBLEMS + 1 and found[-1] == f"rows.csv: … and {300 - MAX_PROBLEMS} more problems."


def test_dollar_and_dot_keys_are_refused_everywhere():
    template = "item:\n  topic: '{city}'\n  extra: {'$where': '{city}'}\n"
    with pytest.raises(ManifestError) as info:
        templates.check(template, source="t.yaml")
    assert "starts with '$'" in str(info.value)
    found = problems(values='city,$where,a.b\n' + "x,1,2\n" * 10)
    assert any("key '$where' starts with '$'" in p for p in found)
    assert any("key 'a.b' contains '.'" in p for p in found)
    rows = "\n".join(f"- {{city: c{n}, slug: s{n}, words: 300}}" for n in range(9)) + "\n- {city: x, '$gt': 1}\n"
    found = problems(values=rows, fmt="yaml")
    assert any(p.startswith("rows.yaml, row 10 (line 10): key '$gt' starts with '$'") for p in found)
    # A value whose mapping hides such a key, filling `extra`, is refused by the articles checks.
    template = "item:\n  topic: '{c}'\n  extra: '{e}'\n"
    rows = "\n".join(f"- {{c: c{n}, e: {{ok: {{'$set': 1}}}}}}" for n in range(10))
    assert any("key '$set' starts with '$'" in p for p in problems(template, rows, "yaml"))


def test_a_hundred_thousand_column_csv_is_one_problem():
    header = ",".join(f"col{n}" for n in range(100_000))
    values = "slug,city,words,audience," + header + "\n" + "".join(f"s{n},c{n},300,\n" for n in range(10))
    found = problems(values=values)
    assert len(found) == 1
    assert found[0].startswith("rows.csv, line 1: has 100,000 columns that no placeholder of the template uses "
                               "('col0', 'col1', 'col2', 'col3', 'col4', …)")


def test_a_list_cannot_go_inside_text():
    template = "item:\n  topic: 'About {kw}'\n"
    rows = "\n".join(f"- {{kw: [a, b{n}]}}" for n in range(10))
    assert problems(template, rows, "yaml")[0] == (
        "rows.yaml, row 1 (line 1), column 'kw', field 'topic': {kw} holds a list, which cannot go inside a text; "
        "only a field that is exactly \"{kw}\" takes it whole.")


def test_templates_are_yaml_and_values_csv_or_yaml():
    with pytest.raises(ManifestError, match="is CSV, but a template is YAML or JSON"):
        templates.template_file("t.csv")
    assert templates.values_format("r.json") == "yaml" and templates.values_format("-") == "yaml"
    assert templates.values_format("-", "csv") == "csv"
    with pytest.raises(ManifestError, match="unknown file type for values"):
        templates.values_format("rows.txt")
    with pytest.raises(UsageError):
        expand(fmt="xml")


# -- saved templates, on both stores ------------------------------------------------------------------------------


def test_saved_templates_on_each_store_are_per_user(store):
    saved, outcome = templates.save(store, "alice", "city-guides", TEMPLATE, source="t.yaml")
    assert outcome is SaveOutcome.created and saved.placeholders == ["slug", "city", "words", "audience"]
    with pytest.raises(NameTaken) as taken:
        templates.save(store, "alice", "city-guides", TEMPLATE.replace("City", "Town"), source="u.yaml")
    assert taken.value.exit_code == 4 and "--replace" in str(taken.value)
    assert templates.load_saved(store, "alice", "city-guides").text == TEMPLATE
    _, outcome = templates.save(store, "alice", "city-guides", TEMPLATE.replace("City", "Town"), source="u.yaml",
                                replace=True)
    assert outcome is SaveOutcome.replaced and templates.load_saved(store, "alice", "city-guides").source == "u.yaml"
    with pytest.raises(NotFound) as other:
        templates.load_saved(store, "bob", "city-guides")
    assert other.value.exit_code == 3
    assert templates.list_saved(store, "bob") == []
    with pytest.raises(NotFound):
        templates.remove(store, "bob", "city-guides")
    windows, _ = templates.save(store, "alice", "crlf", TEMPLATE.replace("\n", "\r\n"), source="w.yaml")
    assert templates.load_saved(store, "alice", "crlf").text == windows.text == TEMPLATE
    parsed = templates.expand_saved(templates.load_saved(store, "alice", "city-guides"), rows_csv(), "csv",
                                    values_source="rows.csv")
    assert parsed.name == "Town guides" and len(parsed.articles) == 10
    templates.remove(store, "alice", "city-guides")
    assert [t.name for t in templates.list_saved(store, "alice")] == ["crlf"]


def test_saving_checks_the_name_and_the_template_first(store):
    for bad in ("City", "-x", "a" * 65, "a b", "ü", ""):
        with pytest.raises(UsageError, match="is not allowed: use 1 to 64 lowercase letters"):
            templates.save(store, "alice", bad, TEMPLATE, source="t.yaml")
    with pytest.raises(ManifestError):
        templates.save(store, "alice", "ok", "item:\n  topic: '{'\n", source="t.yaml")
    assert templates.list_saved(store, "alice") == []


# -- the command line -----------------------------------------------------------------------------------------------


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_nothing_is_stored_on_error_and_json_locates_rows(cli, tmp_path):
    template = write(tmp_path, "t.yaml", TEMPLATE)
    good = write(tmp_path, "rows.csv", rows_csv())
    assert cli("submit", template, "--values", good).code == 0
    bad = write(tmp_path, "bad.csv", rows_csv().replace("c5,City 5,600,", "c5,City 5,99999,"))
    result = cli("submit", template, "--values", bad, "--json")
    assert result.code == 2 and "the template with its rows has 1 problem; nothing was stored." in result.err
    problem = json.loads(result.out)["error"]["problems"][0]
    assert (problem["file"], problem["row"], problem["line"], problem["column"], problem["field"]) == (
        bad, 5, 6, "words", "word_count")
    assert len(json.loads(cli("list", "--json").out)) == 1


def test_the_one_sentence_refusals(cli, tmp_path):
    template = write(tmp_path, "t.yaml", TEMPLATE)
    rows = write(tmp_path, "rows.csv", rows_csv())
    cases = {
        (template,): "is a template (it has 'item:', one article with {placeholders}), not an articles file",
        (str(EXAMPLES / "articles.yaml"), "--values", rows): "is an articles file (it has 'items:'), not a template",
        ("--template", "t"): "template 't' needs its rows: add --values ROWS",
        (template, "--template", "t", "--values", rows): "give either an articles FILE or --template NAME, not both.",
        (): "give an articles FILE, or a template: --template NAME (or a template FILE) with --values ROWS.",
        ("-", "--values", "-"): "the template and its --values cannot both come from standard input.",
    }
    for args, sentence in cases.items():
        result = cli("submit", *args)
        assert result.code == 2 and sentence in result.err and "Traceback" not in result.err, (args, result.err)


def test_template_commands(cli, tmp_path):
    path = write(tmp_path, "t.yaml", TEMPLATE)
    assert cli("template", "list").code == 4  # no store yet: reading commands create none
    saved = cli("template", "save", "city-guides", path)
    assert saved.code == 0 and "Saved template city-guides (placeholders: {slug}, {city}, {words}, {audience})." \
        in saved.err
    assert "There was no store at sqlite:///" in saved.err  # a mistyped --store shows at once
    assert "There was no store" not in cli("template", "save", "other", path).err
    again = cli("template", "save", "city-guides", path)
    assert again.code == 4 and "you have a template named 'city-guides' already" in again.err
    first_saved = json.loads(cli("template", "show", "city-guides", "--json").out)["created_at"]
    replaced = json.loads(cli("template", "save", "city-guides", path, "--replace", "--json").out)
    assert replaced["outcome"] == "replaced" and replaced["created_at"] == first_saved  # as `template show` has it
    advice = cli("template", "save", "arts", str(EXAMPLES / "articles.yaml"))
    assert advice.code == 2 and "use it as an articles FILE, without --values." in advice.err
    assert "submit it" not in advice.err
    listed = cli("template", "list").out.splitlines()
    assert listed[0].split() == ["Name", "Mode", "Placeholders", "Saved", "From"]
    assert listed[1].split()[:6] == ["city-guides", "-", "{slug},", "{city},", "{words},", "{audience}"]
    assert cli("template", "show", "city-guides").out == TEMPLATE
    shown = json.loads(cli("template", "show", "city-guides", "--json").out)
    assert shown["text"] == TEMPLATE and shown["userId"] == "tester" and shown["mode"] is None
    assert cli("template", "show", "city-guides", "--user", "someone-else").code == 3
    assert json.loads(cli("template", "list", "--user", "someone-else", "--json").out) == []
    bad = cli("template", "save", "ok", write(tmp_path, "bad.yaml", "item:\n  topic: '{a'\n"))
    assert bad.code == 2 and "the template has 1 problem; nothing was stored." in bad.err
    assert cli("template", "remove", "city-guides").code == 0
    assert cli("template", "remove", "city-guides").code == 3
    for command in ("save", "list", "show", "remove"):
        helped = cli("template", command, "--help").out
        assert "Example: bulkgen template" in " ".join(helped.split()) and "Exit codes:" in helped


def test_submit_a_saved_template_with_wait_end_to_end(svc, tmp_path):
    """Real processes, the reference service: save, then submit --template --values --wait, then read back."""
    env = env_for(tmp_path, svc)
    assert run_cli(["template", "save", "city-guides", str(EXAMPLES / "city-guides.yaml")], env).code == 0
    done = run_cli(["submit", "--template", "city-guides", "--values", str(EXAMPLES / "cities.csv"), "--wait",
                    "--json"], env)
    assert done.code == 0, done.err
    final = json.loads(done.out)
    assert final["completed_items"] == final["total_items"] == 10
    status = status_of(env, final["bulk_job_id"])
    assert status["bulk_job"]["name"] == "City guides"
    assert [job["item_id"] for job in status["jobs"]][:2] == ["lisbon", "porto"]
    lines = run_cli(["results", final["bulk_job_id"], "--format", "jsonl"], env).out.splitlines()
    first, second = (json.loads(line)["article"] for line in lines[:2])
    assert (first["word_count"], first["audience"]) == (1200, "first-time visitors")
    assert second["word_count"] == 1000 and "Ribeira" in second["instructions"]
    assert all(json.loads(line)["status"] == "completed" for line in lines)
    # Another user does not see the template.
    other = run_cli(["submit", "--template", "city-guides", "--values", str(EXAMPLES / "cities.csv")],
                    env | {"BULKGEN_USER": "someone-else"})
    assert other.code == 3 and "no template 'city-guides' for this user" in other.err


def test_values_from_standard_input(tmp_path):
    env = env_for(tmp_path)
    import subprocess
    import sys

    from tests.cli_helpers import ROOT

    proc = subprocess.run([sys.executable, "-m", "bulkgen_cli", "submit", str(EXAMPLES / "city-guides.yaml"),
                           "--values", "-", "--format", "csv"], input=(EXAMPLES / "cities.csv").read_text(),
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"from {EXAMPLES / 'city-guides.yaml'} with standard input." in proc.stderr
