"""The store, as the server's threads use it: one connection per worker thread."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from bulkgen_cli.store.base import Store

T = TypeVar("T")


class StoreAccess:
    """Each thread opens its own store once (a SQLite connection is one writer at a time); a store that
    is not thread-safe (mongomock, in tests) is shared under one lock instead."""

    def __init__(self, open_store: Callable[[], Store], shared: bool = False):
        self.open_store, self.shared = open_store, shared
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Store] = []
        self._one: Store | None = None

    @contextmanager
    def using(self) -> Iterator[Store]:
        if self.shared:
            with self._lock:
                if self._one is None:
                    self._one = self.open_store()
                yield self._one
            return
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self.open_store()
            with self._lock:
                self._opened.append(store)
        yield store

    def call(self, work: Callable[[Store], T]) -> T:
        with self.using() as store:
            return work(store)

    def close(self) -> None:
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()
            if self._one is not None:
                self._one.close()
                self._one = None
