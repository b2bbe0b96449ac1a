"""The dashboard page (`GET /`; design.md, "The dashboard page"): three files shipped in the package.

The page is plain HTML, CSS and a script (static/): no build step, nothing
fetched from elsewhere; it reads everything through the API with the user's
token. Its Content-Security-Policy allows only this origin's script and style,
no inline script and no connection elsewhere, so that even text that slipped
into the page as markup could not run or send anything away. Every answer asks
the browser to revalidate (`no-cache`): a new bulkgen is seen on the next load.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

#: The page's files, by the name they are served under, and their media types.
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def static_file(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("bulkgen_cli.server").joinpath("static", name).read_bytes()


def add_page(app: FastAPI) -> None:
    """`GET /` and `GET /static/{app.js,app.css}`, outside the OpenAPI document."""
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

