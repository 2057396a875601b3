"""The web console: static files shipped in the Lambda package (chalicelib/console), served from
the API's own origin, so it needs no other server and loads nothing from anywhere else. Public:
the files hold no data. The console signs in with an API key the browser keeps for the session
and calls the REST API with it, exactly as the CLI does.

The page (/console) is revalidated on every load; everything it loads is under
/console/<release>/, where the release is a hash of all the console's files, and is cached for
good: a page load costs the function one call, not one per file, and a new release shows at
once because its page names new URLs."""

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
}
REVALIDATE = "no-cache"  # the page: checked (ETag) on every load
FOREVER = "public, max-age=31536000, immutable"  # a release's files never change
PAGE = "index.html"  # served at /console only: its relative URLs resolve from there


@bp.route("/console", methods=["GET"])
@handles_errors
def console_page():
    if bp.current_request.context.get("path", "").endswith("/"):
        # /console/ would resolve the page's "console/…" URLs under /console/console/.
        return Response(body="", status_code=301, headers={"Location": "../console"})
    return _serve(PAGE, REVALIDATE)


@bp.route("/console/{release}/{asset}", methods=["GET"])
@handles_errors
def console_asset(release: str, asset: str):
    current, _ = _release()
    if release != current:
        raise NotFound("that console release is no longer served; reload /console")
    if asset == PAGE:
        raise NotFound(f"the console is at /console, not /console/{release}/{PAGE}")
    return _serve(asset, FOREVER)


def _serve(name: str, cache: str) -> Response:
    _, files = _release()
    if name not in files:
        raise NotFound(f"the console has no file {name!r}")
    body, etag, content_type = files[name]
    headers = SECURITY_HEADERS | {"ETag": etag, "Cache-Control": cache}
    if bp.current_request.headers.get("if-none-match") == etag:
        return Response(body="", status_code=304, headers=headers)
    return Response(body=body, status_code=200, headers=headers | {"Content-Type": content_type})


@functools.cache
def _release() -> tuple[str, dict[str, tuple[str, str, str]]]:
    """(the release, name -> (text, ETag, Content-Type)) of the console's files; nothing else
    is ever served (no path leaves the console's directory: only its own file names). The
    page's "console/…" URLs are rewritten to the release's."""
    texts = {
        path.name: path.read_text(encoding="utf-8")
        for path in sorted(CONSOLE_DIR.iterdir())
        if path.suffix in CONTENT_TYPES
    }
    release = _digest("".join(f"{name}\0{text}\0" for name, text in texts.items()))[:12]
    texts[PAGE] = texts[PAGE].replace('"console/', f'"console/{release}/')
    files = {
        name: (text, f'"{_digest(text)[:20]}"', CONTENT_TYPES[Path(name).suffix])
        for name, text in texts.items()
    }
    return release, files


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
