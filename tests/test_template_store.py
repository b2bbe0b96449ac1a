"""The saved-template verbs of the store contract (store/base.py), on SQLite and MongoDB alike."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

from bulkgen_cli.core.model import SavedTemplate, SaveOutcome, utcnow


def template(name: str = "city-guides", user: str = "alice", text: str = "item:\n  topic: '{city}'\n",
             when: dt.datetime | None = None) -> SavedTemplate:
    when = when or utcnow()
    return SavedTemplate(name=name, userId=user, text=text, mode="topic", placeholders=["city"],
                         source="city-guides.yaml", created_at=when, updated_at=when)


def test_a_saved_template_reads_back_whole(store):
    saved = template(text="name: Ünïcode ✓\nitem:\n  topic: '{city}'\n")
    assert store.save_template(saved) is SaveOutcome.created
    got = store.get_template("alice", "city-guides")
    assert got == saved
    assert got.created_at.tzinfo is not None and got.placeholders == ["city"]


def test_saving_a_taken_name_writes_nothing_without_replace(store):
    first = template(text="first")
    store.save_template(first)
    assert store.save_template(template(text="second")) is SaveOutcome.exists
    assert store.get_template("alice", "city-guides").text == "first"


def test_replace_takes_the_place_of_the_old_one_and_keeps_when_it_was_first_saved(store):
    t0 = utcnow()
    store.save_template(template(text="first", when=t0))
    t1 = t0 + dt.timedelta(seconds=5)
    newer = dataclasses.replace(template(text="second", when=t1), mode=None, placeholders=["a", "b"], source="-")
    assert store.save_template(newer, replace=True) is SaveOutcome.replaced
    got = store.get_template("alice", "city-guides")
    assert (got.text, got.mode, got.placeholders, got.source) == ("second", None, ["a", "b"], "-")
    assert got.created_at == t0 and got.updated_at == t1
    # Replacing a name that is not taken creates it.
    assert store.save_template(template("fresh"), replace=True) is SaveOutcome.created
    assert store.get_template("alice", "fresh") is not None


def test_templates_are_per_user(store):
    store.save_template(template(user="alice", text="alice's"))
    assert store.save_template(template(user="bob", text="bob's")) is SaveOutcome.created
    assert store.get_template("bob", "city-guides").text == "bob's"
    assert store.get_template("carol", "city-guides") is None
    assert [t.userId for t in store.list_templates("alice")] == ["alice"]
    assert not store.remove_template("carol", "city-guides")
    assert store.get_template("alice", "city-guides").text == "alice's"


def test_list_is_by_name_and_remove_removes_one(store):
    for name in ("weekly", "alpha", "m-2"):
        store.save_template(template(name))
    assert [t.name for t in store.list_templates("alice")] == ["alpha", "m-2", "weekly"]
    assert store.remove_template("alice", "m-2")
    assert not store.remove_template("alice", "m-2")
    assert [t.name for t in store.list_templates("alice")] == ["alpha", "weekly"]
    assert store.list_templates("nobody") == []


def test_racing_saves_of_a_new_name_store_exactly_one(store, backend, tmp_path):
    """Each save is one conditional write: of N racing saves of a new name, one creates it.

    SQLite: four connections to the same file, in four threads. mongomock's objects are not
    thread-safe, so there the saves come one after the other; the unique index decides alike.
    """
    if backend.name != "sqlite":
        outcomes = [store.save_template(template(text=str(n))) for n in range(4)]
    else:
        from bulkgen_cli.store.sqlite import SqliteStore

        outcomes = []
        barrier = threading.Barrier(4)

        def save(n: int) -> None:
            with SqliteStore(tmp_path / "store.db") as own:
                barrier.wait()
                outcomes.append(own.save_template(template(text=str(n))))

        threads = [threading.Thread(target=save, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert sorted(o.value for o in outcomes) == ["created", "exists", "exists", "exists"]
    assert len(store.list_templates("alice")) == 1


def test_a_new_name_past_max_count_is_refused_in_the_same_step_as_the_insert(store):
    import pytest

    from bulkgen_cli.core.errors import QuotaExceeded

    assert [store.save_template(template(f"t{n}"), max_count=2) for n in range(2)] == [SaveOutcome.created] * 2
    with pytest.raises(QuotaExceeded) as refused:
        store.save_template(template("t2"), max_count=2)
    assert (refused.value.which, refused.value.have, refused.value.limit) == ("templates", 2, 2)
    with pytest.raises(QuotaExceeded):
        store.save_template(template("t2"), replace=True, max_count=2)  # a replace of a new name is a new one
    assert store.save_template(template("t1", text="again"), replace=True, max_count=2) is SaveOutcome.replaced
    assert store.save_template(template("t0"), max_count=2) is SaveOutcome.exists
    assert store.save_template(template("t0", user="bob"), max_count=2) is SaveOutcome.created
    assert [t.name for t in store.list_templates("alice")] == ["t0", "t1"]
    assert store.save_template(template("t2")) is SaveOutcome.created  # no limit: the CLI's own


def test_a_schedule_past_max_count_is_refused_in_the_same_step_as_the_insert(store):
    import pytest

    from bulkgen_cli.ops import schedules
    from bulkgen_cli.core.errors import QuotaExceeded

    source = {"kind": "file", "text": "mode: topic\nitems: []\n", "format": None, "file": "f.yaml"}

    def add(name: str, user: str = "alice", most: int = 2):
        return schedules.add(store, user, name, "0 6 * * *", "UTC", source, {}, max_count=most)

    add("s0"), add("s1")
    with pytest.raises(QuotaExceeded) as refused:
        add("s2")
    assert (refused.value.which, refused.value.have, refused.value.limit) == ("schedules", 2, 2)
    add("s0", user="bob")
    assert [s.name for s in store.list_schedules("alice")] == ["s0", "s1"]
    add("s2", most=0)  # no limit: the CLI's own
