"""node_agent.http1, the endpoint proxy's reading of HTTP/1.1: request heads it passes (and what
it takes out of them), the ones it refuses (each a request-smuggling or parser-confusion shape),
where bodies end however the bytes are split, and how a model's answers are framed."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.http1 import (
    MAX_HEAD_BYTES,
    BadMessage,
    Chunked,
    HeadReader,
    Length,
    UntilClose,
    error_response,
    parse_request,
    parse_response,
)


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def request(*fields: str, line: str = "POST /v1/chat?x=1 HTTP/1.1") -> bytes:
    return head(line, "Host: node:8000", *fields)


# --- what passes, and what the model gets -------------------------------------------------


def test_a_keyed_request_loses_its_key_and_hop_by_hop_fields_and_keeps_the_rest():
    parsed = parse_request(
        request(
            "Authorization: Bearer prismep_k",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Authorization: Basic eA==",
            "X-Request-Id: 7",
            "Content-Length: 12",
        ),
        strip_authorization=True,
    )
    assert parsed.authorization == b"Bearer prismep_k"
    assert (
        parsed.head
        == head(
            "POST /v1/chat?x=1 HTTP/1.1", "Host: node:8000", "X-Request-Id: 7", "Content-Length: 12"
        )
        + b"\r\n\r\n"
    )
    assert isinstance(parsed.body, Length) and parsed.body.left == 12
    assert (parsed.method, parsed.keep_alive, parsed.upgrade) == (b"POST", True, False)


def test_a_public_endpoint_passes_authorization_to_the_model():
    parsed = parse_request(request("authorization: Bearer theirs"), strip_authorization=False)
    assert b"authorization: Bearer theirs" in parsed.head


def test_fields_a_connection_header_names_are_dropped_and_it_keeps_only_its_options():
    parsed = parse_request(
        request("Connection: keep-alive, X-Hop", "X-Hop: 1", "X-Kept: 2"), strip_authorization=True
    )
    assert b"X-Hop" not in parsed.head and b"X-Kept: 2" in parsed.head
    assert b"Connection: keep-alive\r\n" in parsed.head


@pytest.mark.parametrize(
    ("fields", "line", "keep_alive", "upgrade"),
    [
        ((), "GET / HTTP/1.1", True, False),
        (("Connection: close",), "GET / HTTP/1.1", False, False),
        ((), "GET / HTTP/1.0", False, False),
        (("Connection: Keep-Alive",), "GET / HTTP/1.0", True, False),
        (("Connection: Upgrade", "Upgrade: websocket"), "GET /ws HTTP/1.1", True, True),
        (("Upgrade: websocket",), "GET /ws HTTP/1.1", True, False),  # not named in Connection
    ],
)
def test_keep_alive_and_upgrade_follow_the_version_and_connection(
    fields, line, keep_alive, upgrade
):
    parsed = parse_request(request(*fields, line=line), strip_authorization=True)
    assert (parsed.keep_alive, parsed.upgrade) == (keep_alive, upgrade)


def test_a_chunked_request_and_one_without_a_body():
    assert isinstance(parse_request(request("Transfer-Encoding: Chunked"), True).body, Chunked)
    assert parse_request(request("Content-Length: 0"), True).body is None
    assert parse_request(request(line="GET / HTTP/1.1"), True).body is None


# --- what is refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("Content-Length: 5", "Transfer-Encoding: chunked"), 400),  # CL.TE smuggling
        (request("Transfer-Encoding: chunked", "Content-Length: 5"), 400),
        (request("Content-Length: 5", "Content-Length: 6"), 400),
        (request("Content-Length: 5, 5"), 400),
        (request("Content-Length: -1"), 400),
        (request("Content-Length: 0x10"), 400),
        (request("Transfer-Encoding: gzip, chunked"), 501),
        (request("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 501),
        (request("Transfer-Encoding: chunked", line="POST / HTTP/1.0"), 400),
        (request("Transfer-Encoding : chunked"), 400),  # space before the colon
        (request("X-Folded: a", " continued"), 400),  # obsolete line folding
        (request("X-Bad: a\x00b"), 400),
        (request("X-Bad: a\rb"), 400),  # a CR that is not a line end
        (request("X-Bad: a\nTransfer-Encoding: chunked"), 400),  # a bare LF as a line end
        (request("no colon here"), 400),
        (request("Authorization: Bearer a", "Authorization: Bearer b"), 400),
        (request(line="GET http://elsewhere/ HTTP/1.1"), 400),  # absolute-form
        (request(line="OPTIONS * HTTP/1.1"), 400),
        (request(line="CONNECT model:80 HTTP/1.1"), 400),
        (request(line="GET / HTTP/2.0"), 505),
        (request(line="GET /a b HTTP/1.1"), 400),
        (request(line="GET /\x7f HTTP/1.1"), 400),
        (request(line="G(T / HTTP/1.1"), 400),
        (request(line="GET /" + "a" * 70_000 + " HTTP/1.1"), 414),
    ],
)
def test_heads_two_parsers_could_read_differently_are_refused(raw, status):
    with pytest.raises(BadMessage) as refused:
        parse_request(raw, strip_authorization=True)
    assert refused.value.status == status


def test_a_head_over_the_limit_is_refused_while_it_arrives():
    reader = HeadReader()
    with pytest.raises(BadMessage) as refused:
        for _ in range(MAX_HEAD_BYTES // 1000 + 2):
            reader.take(b"X-Filler: " + b"a" * 990 + b"\r\n", 0)
    assert refused.value.status == 431


# --- where messages end -------------------------------------------------------------------


def test_a_head_found_across_reads_and_the_bytes_after_it():
    reader = HeadReader()
    assert reader.take(b"GET / HTTP/1.1\r\nHost: a\r", 0) == (None, 24)
    assert reader.partial
    found, end = reader.take(b"\n\r\nBODY", 0)
    assert (found, end) == (b"GET / HTTP/1.1\r\nHost: a", 3)
    assert not reader.partial


def test_empty_lines_before_a_request_are_skipped():
    assert HeadReader().take(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 4)[0] == b"GET / HTTP/1.1"


CHUNKED = b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"


@given(st.lists(st.integers(min_value=1, max_value=len(CHUNKED)), max_size=12))
def test_a_chunked_body_ends_in_the_same_place_however_it_is_split(cuts):
    data = CHUNKED + b"NEXT REQUEST"
    points = sorted({0, *cuts, len(data)})
    body, consumed = Chunked(), 0
    for start, stop in itertools.pairwise(points):
        piece = data[start:stop]
        if body.done:
            break
        consumed += body.feed(piece, 0)
    assert body.done and consumed == len(CHUNKED)


@pytest.mark.parametrize(
    "broken",
    [b"zz\r\n", b"5\r\nhello!!\r\n", b"5\nhello\r\n", b"1" * 17 + b"\r\n"],
)
def test_a_malformed_chunked_body_is_refused(broken):
    with pytest.raises(BadMessage):
        Chunked().feed(broken + b"0\r\n\r\n", 0)


def test_a_length_body_ends_after_its_bytes_even_split():
    body = Length(10)
    assert body.feed(b"abcd", 0) == 4 and not body.done
    assert body.feed(b"XXefghijNEXT", 2) == 8 and body.done


# --- the model's answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "method", "body", "keep_alive"),
    [
        (head("HTTP/1.1 200 OK", "Content-Length: 3"), b"GET", Length, True),
        (head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), b"GET", Chunked, True),
        (head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), b"GET", UntilClose, False),
        (head("HTTP/1.1 200 OK"), b"GET", UntilClose, False),
        (head("HTTP/1.1 200 OK", "Content-Length: 3"), b"HEAD", None, True),
        (head("HTTP/1.1 204 No Content"), b"DELETE", None, True),
        (head("HTTP/1.1 304 Not Modified", "Content-Length: 9"), b"GET", None, True),
        (head("HTTP/1.1 100 Continue"), b"POST", None, True),
        (head("HTTP/1.1 200 OK", "Content-Length: 0", "Connection: close"), b"GET", None, False),
        (head("HTTP/1.0 200 OK", "Content-Length: 3"), b"GET", Length, False),
        (head("HTTP/1.1 200"), b"GET", UntilClose, False),  # no reason phrase
    ],
)
def test_responses_are_framed_as_rfc_9112_says(raw, method, body, keep_alive):
    parsed = parse_response(raw, method)
    assert (type(parsed.body) if body else parsed.body) == body
    assert parsed.keep_alive == keep_alive


@pytest.mark.parametrize(
    "raw", [b"SSH-2.0-OpenSSH_9.6", head("HTTP/1.1 200 OK", "Content-Length: x")]
)
def test_an_answer_that_is_not_http_is_a_502(raw):
    with pytest.raises(BadMessage) as broken:
        parse_response(raw, b"GET")
    assert broken.value.status == 502


def test_the_proxys_own_answers_are_complete_responses_in_the_error_shape():
    raw = error_response(401, "unauthorized", "no key", b"WWW-Authenticate: Bearer\r\n")
    head_part, body = raw.split(b"\r\n\r\n", 1)
    parsed = parse_response(head_part, b"GET")
    assert (parsed.status, parsed.keep_alive, parsed.body.left) == (401, False, len(body))
    assert body == b'{"error": {"code": "unauthorized", "message": "no key"}}'
