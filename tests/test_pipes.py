"""Tables survive a pipe: when stdout is not a terminal, every column is printed whole, one line per row."""

from __future__ import annotations

import yaml

from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
from bulkgen_cli.store.sqlite import SqliteStore
from tests.conftest import claim

LONG_NAME = "A name much longer than thirty characters, with  doubled  spaces"
LONG_TOPIC = "A topic that is far longer than the fifty characters a terminal column allows"
LONG_ERROR = "HTTP 500: " + "the service explained at length " * 4


def submit(cli, tmp_path, n: int) -> list[str]:
    ids = []
    for k in range(n):
        path = tmp_path / f"f{k}.yaml"
        topics = [LONG_TOPIC] + [f"Topic {i}" for i in range(9)]
        path.write_text(yaml.safe_dump({"name": f"{LONG_NAME} {k}", "items": [{"topic": t} for t in topics]}))
        result = cli("submit", str(path))
        assert result.code == 0, result.err
        ids.append(result.out.strip())
    return ids


def test_list_piped_keeps_every_column_whole(cli, tmp_path):
    ids = submit(cli, tmp_path, 6)
    out = cli("list").out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "Name", "Priority", "Mode", "Status", "Done", "Failed", "Created"]
    rows = lines[1:]
    assert len(rows) == 6 and sum(" queued " in row for row in rows) == 6  # `grep -c queued` counts them
    assert "…" not in out
    for bulk_id in ids:
        assert sum(row.startswith(bulk_id + " ") for row in rows) == 1
    assert " ".join(LONG_NAME.split()) in out  # whitespace folded to keep one row per line, nothing cut
    status_column = lines[0].index("Status")
    assert all(row[status_column:].startswith("queued") for row in rows)  # aligned: `cut -c` works too


def test_status_items_piped_keeps_labels_and_errors_whole(cli, tmp_path):
    (bulk_id,) = submit(cli, tmp_path, 1)
    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db") as store:
        item = claim(store, "p", 60, utcnow())
        store.finish_item(item.id, "p", Outcome(ItemStatus.failed, error=LONG_ERROR), utcnow())
        store.refresh_counters(bulk_id, utcnow())
    out = cli("status", bulk_id, "--items").out
    table = out[out.index("\n#"):]
    assert "…" not in table  # (the job's error summary is stored cut, by design; the table is not)
    assert f"Bulk job: {bulk_id} {' '.join(LONG_NAME.split())} 0" in out
    assert "Status: processing" in out
    first = next(line for line in out.splitlines() if line.startswith("1 "))
    assert LONG_TOPIC in first and " ".join(LONG_ERROR.split()) in first and " failed " in first
    assert sum(1 for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()) == 10
