"""The web console: static files shipped in the Lambda package (chalicelib/console), served from
the API's own origin, so it needs no other server and loads nothing from anywhere else. Public:
the files hold no data. The console signs in with an API key the browser keeps for the session
and calls the REST API with it, exactly as the CLI does."""

import functools
import hashlib
from pathlib import Path

from chalice import Blueprint, Response

from chalicelib.errors import NotFound
from chalicelib.routes.common import handles_errors

bp = Blueprint(__name__)

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Only the console's own files run or load; no page may frame it (clickjacking a Stop button).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) so a new release shows at once
}


PAGE = "index.html"  # served at /console only: its relative URLs resolve from there


@bp.route("/console", methods=["GET"])
@handles_errors
def console_page():
    if bp.current_request.context.get("path", "").endswith("/"):
        # /console/ would resolve the page's "console/app.js" to /console/console/app.js.
        return Response(body="", status_code=301, headers={"Location": "../console"})
    return _serve(PAGE)


@bp.route("/console/{asset}", methods=["GET"])
@handles_errors
def console_asset(asset: str):
    if asset == PAGE:
        raise NotFound(f"the console is at /console, not /console/{PAGE}")
    return _serve(asset)


def _serve(name: str) -> Response:
    body, etag, content_type = _asset(name)
    headers = SECURITY_HEADERS | {"ETag": etag}
    if bp.current_request.headers.get("if-none-match") == etag:
        return Response(body="", status_code=304, headers=headers)
    return Response(body=body, status_code=200, headers=headers | {"Content-Type": content_type})


@functools.cache
def _asset(name: str) -> tuple[str, str, str]:
    """(text, ETag, Content-Type) of one of the console's files; NotFound for anything else
    (no path ever leaves the console's directory: only its own file names are served)."""
    files = {path.name: path for path in CONSOLE_DIR.iterdir() if path.suffix in CONTENT_TYPES}
    path = files.get(name)
    if path is None:
        raise NotFound(f"the console has no file {name!r}")
    text = path.read_text(encoding="utf-8")
    etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:20] + '"'
    return text, etag, CONTENT_TYPES[path.suffix]
