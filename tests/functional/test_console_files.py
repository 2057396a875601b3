"""The console's files, served by the API function from the package: the page, the modules it
loads (each import resolves to a served file), their types, the security headers, the page
revalidated and a release's files cached for good, and nothing outside the console's
directory."""

import re
from pathlib import Path

import pytest

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "chalicelib" / "console"
IMPORT = re.compile(r"""(?:import|from)\s*["'](\./[\w.-]+)["']""")
ASSET = re.compile(r"""(?:src|href)="console/(\w+)/([\w.-]+)\"""")


def test_the_page_is_served_with_a_strict_content_security_policy(client):
    response = client.http.get("/console")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = response.body.decode()
    # Nothing inline (the policy would block it): scripts only by src, no style or on* attributes.
    assert re.findall(r"<script\b[^>]*>", page) == re.findall(r"<script\b[^>]*\bsrc=[^>]*>", page)
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", page) is None
    assert re.search(r"\s(style|on[a-z]+)\s*=", page) is None and "<style" not in page


def _release(client) -> tuple[str, set[str]]:
    """The release the page names, and the files it loads directly."""
    found = ASSET.findall(client.http.get("/console").body.decode())
    releases = {release for release, _ in found}
    assert len(releases) == 1, releases
    return releases.pop(), {name for _, name in found}


def test_every_file_the_page_loads_is_served_with_its_type(client):
    release, wanted = _release(client)
    seen = set()
    assert any(name.endswith(".js") for name in wanted)
    while wanted:
        name = wanted.pop()
        seen.add(name)
        response = client.http.get(f"/console/{release}/{name}")
        assert response.status_code == 200, name
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        assert response.headers["Content-Type"].startswith(kind[name.rsplit(".", 1)[1]])
        if name.endswith(".js"):
            wanted |= {found.removeprefix("./") for found in IMPORT.findall(response.body.decode())}
            wanted -= seen
    shipped = {p.name for p in CONSOLE_DIR.iterdir() if p.suffix in (".js", ".css")}
    assert shipped <= seen  # no file ships that the page never loads


def test_the_page_is_revalidated_with_its_etag(client):
    first = client.http.get("/console")
    assert first.headers["Cache-Control"] == "no-cache"
    etag = first.headers["ETag"]
    again = client.http.get("/console", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.body
    other = client.http.get("/console", headers={"If-None-Match": '"stale"'})
    assert other.status_code == 200


def test_the_page_with_a_trailing_slash_moves_to_where_its_links_resolve(client):
    response = client.http.get("/console/")
    assert response.status_code == 301
    assert response.headers["Location"] == "../console"


@pytest.mark.parametrize(
    "name", ["missing.js", "..", "%2e%2e%2fapp.py", "app.py", "index", "index.html"]
)
def test_nothing_but_the_console_files_is_served(client, name):
    release, _ = _release(client)
    response = client.http.get(f"/console/{release}/{name}")
    assert response.status_code == 404
    assert b'"not_found"' in response.body


def test_another_release_is_not_served(client):
    """A page from before a release names the old release: it must reload, not mix files."""
    release, _ = _release(client)
    for other in ("0" * len(release), "x"):
        response = client.http.get(f"/console/{other}/app.js")
        assert response.status_code == 404
        assert b"reload /console" in response.body


def test_a_changed_file_makes_a_new_release(tmp_path, monkeypatch):
    from chalicelib.routes import console

    for path in console.CONSOLE_DIR.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(console, "CONSOLE_DIR", tmp_path)
    console._release.cache_clear()
    before, files = console._release()
    assert f'src="console/{before}/app.js"' in files["index.html"][0]
    (tmp_path / "format.js").write_text((tmp_path / "format.js").read_text() + "\n// changed\n")
    console._release.cache_clear()
    after, files = console._release()
    console._release.cache_clear()  # the real directory again for the other tests
    assert after != before and f'src="console/{after}/app.js"' in files["index.html"][0]


def test_the_console_fits_a_lambda_response_many_times_over():
    total = sum(p.stat().st_size for p in CONSOLE_DIR.iterdir())
    assert total < 300_000  # Lambda's response limit is 6 MB; the console loads in one go
