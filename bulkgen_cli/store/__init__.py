"""The store: its contract (`base`), its decisions written once (`rules`), its verbs written once over each
backend's primitives (`queue`), the SQLite and MongoDB backends, repair. Backend choice happens here and nowhere else; each backend is imported only when chosen (pymongo
costs the CLI's cold start, and SQLite's module is not needed with MongoDB).

May import core and input (design.md, "Layers").
"""

from __future__ import annotations

from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.store.base import OpenMode, Store


def open_store(url: str, mode: OpenMode = "create") -> Store:
    """Open the store at `url`: `sqlite:///PATH`, a plain path, or `mongodb[+srv]://…`."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from bulkgen_cli.store.mongo import MongoStore

        return MongoStore.from_url(url, mode=mode)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(
            f"unknown store scheme '{scheme}://': use sqlite:///PATH or mongodb://HOST/DB."
        )
    else:
        path = url
    if not path:
        raise UsageError("the sqlite:/// store URL names no file: use sqlite:///PATH.")
    from bulkgen_cli.store.sqlite import SqliteStore

    return SqliteStore(path, mode)


__all__ = ["OpenMode", "Store", "open_store"]
