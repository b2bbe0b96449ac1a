"""The dashboard page (`GET /`) and the one API route it needs beyond the story's: an article as Markdown.

The page is three files shipped in the package (static/): no build step, nothing
fetched from elsewhere. It is served with a Content-Security-Policy that allows
only this origin's script and style and no inline script, so that even text
that slipped into the page as markup could not run. Every answer asks the
browser to revalidate (`no-cache`): a new bulkgen is seen on the next load.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from fastapi.responses import Response

from bulkgen_cli import jobs
from bulkgen_cli.errors import InvalidTransition, NotFound
from bulkgen_cli.model import ItemStatus
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.server.auth import Caller, caller
from bulkgen_cli.server.problems import responses

#: The page's files, by the name they are served under, and their media types.
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
MARKDOWN = "text/markdown; charset=utf-8"
ItemId = Annotated[str, Path(description="The item's id in the store (`jobs[].id`)", max_length=100)]
BulkId = Annotated[str, Path(description="The bulk job's id", max_length=100)]
Me = Annotated[Caller, Depends(caller)]


def static_file(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("bulkgen_cli.server").joinpath("static", name).read_bytes()


def add_page(app: FastAPI, access: StoreAccess) -> None:
    """`GET /`, `GET /static/{app.js,app.css}` (outside the OpenAPI document), and the article route."""
    files = {name: static_file(name) for name in FILES}

    def serve(name: str) -> Response:
        return Response(files[name], media_type=FILES[name], headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return serve("index.html")

    @app.get("/static/app.js", include_in_schema=False)
    def script() -> Response:
        return serve("app.js")

    @app.get("/static/app.css", include_in_schema=False)
    def style() -> Response:
        return serve("app.css")

    _article_route(app, access)


def _article_route(app: FastAPI, access: StoreAccess) -> None:
    from bulkgen_cli.export import markdown

    article_doc: dict[int | str, dict[str, Any]] = {
        200: {"description": "The article as `bulkgen results` writes it: YAML front matter, then the text",
              "content": {"text/markdown": {"schema": {"type": "string"}}}}}

    @app.get("/api/bulk-generate/{bulk_id}/articles/{item_id}", response_class=Response, tags=["bulk jobs"],
             responses={**article_doc, **responses(401, 404, 409, 422, 503)})
    def article(bulk_id: BulkId, item_id: ItemId, me: Me) -> Response:
        """One completed article of a job, as Markdown (text, never HTML); 409 while it is not written."""
        def read(store: Any) -> str:
            bulk = jobs.visible(store, bulk_id, me.user, me.admin)
            item = next((i for i in store.list_items(bulk.id) if i.id == item_id), None)
            if item is None:
                raise NotFound(f"bulk job {bulk.id} has no item {item_id!r}.")
            if item.status != ItemStatus.completed.value:
                raise InvalidTransition(f"item {item.queue_position} is {item.status}: it has no article yet.")
            return markdown(bulk, item)

        text = access.call(read)
        return Response(text, media_type=MARKDOWN, headers={"X-Content-Type-Options": "nosniff",
                                                            "Content-Security-Policy": "default-src 'none'",
                                                            "Cache-Control": "no-cache"})
