"""Where the articles come from: one typed source, one function that makes it articles (input/sources.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkgen_cli.core.errors import ManifestError
from bulkgen_cli.core.model import SavedTemplate
from bulkgen_cli.input import sources

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILE = str(EXAMPLES / "articles.yaml")
TEMPLATE = str(EXAMPLES / "city-guides.yaml")
ROWS = str(EXAMPLES / "cities.csv")


def saved(name: str) -> SavedTemplate:
    return SavedTemplate(name=name, userId="alice", text=Path(TEMPLATE).read_text())


@pytest.mark.parametrize("paths", [(FILE, None, None), (TEMPLATE, None, ROWS), (None, "city", ROWS)],
                         ids=["file", "template-file", "template"])
def test_a_source_stored_and_read_back_makes_the_same_articles(paths):
    source = sources.read(*paths)
    stored = sources.record(source)
    assert stored["kind"] == sources.KINDS[type(source)]
    again = sources.from_record(stored)
    assert again == source
    first, second = sources.manifest_of(source, saved), sources.manifest_of(again, saved)
    assert first.articles == second.articles and first.name == second.name and len(first.articles) >= 10


def test_a_schedule_stored_before_the_typed_sources_is_read():
    """The stored form is the one schedules kept before: their dicts are read as they are."""
    old = {"kind": "template", "template": "city", "values_format": "csv", "values_file": ROWS,
           "values_text": Path(ROWS).read_text()}
    source = sources.from_record(old)
    assert source == sources.SavedTemplateRows("city", sources.Rows(old["values_text"], "csv", ROWS))
    assert sources.record(source) == old
    assert sources.from_record({"kind": "from-the-future"}) is None


def test_what_a_source_is_called_in_messages():
    assert sources.describe(sources.read(FILE, None, None)) == FILE
    assert sources.describe(sources.read(None, "city", ROWS)) == f"template city with {ROWS}"
    assert sources.describe(sources.read(TEMPLATE, None, ROWS)) == f"{TEMPLATE} with {ROWS}"


def test_a_bad_mode_is_said_before_the_file_is_read(tmp_path):
    with pytest.raises(ManifestError, match="--mode must be one of"):
        sources.read(str(tmp_path / "missing.yaml"), None, None, mode="poem")
