"""`bulkgen serve`: the library layer over HTTP (design.md, "The HTTP server").

Imported only by `bulkgen serve` (FastAPI and uvicorn are the `serve` extra):
the plain CLI never loads this package.

A front end: may import core, input, store, content, delivery, engine and ops; never the CLI
(design.md, "Layers").
"""
