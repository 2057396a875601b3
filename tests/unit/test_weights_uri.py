import pytest

from chalicelib.weights_uri import (
    BucketSource,
    HfSource,
    InvalidWeightsSource,
    LocalSource,
    UrlSource,
    parse_weights_uri,
)

SHA = "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/model", HfSource("org/model", "main")),
        ("hf://org/model@v1.0", HfSource("org/model", "v1.0")),
        ("hf://org/model:refs/pr/1", HfSource("org/model", "refs/pr/1")),
        ("hf://Org-1/Model.v2_x@0123abcd", HfSource("Org-1/Model.v2_x", "0123abcd")),
        ("r2://weights/llama/8b/", BucketSource("r2", "weights", "llama/8b/")),
        ("r2://weights", BucketSource("r2", "weights", "")),
        ("s3://my.bucket/model.safetensors", BucketSource("s3", "my.bucket", "model.safetensors")),
        ("https://host.example/w.tar.gz", UrlSource("https://host.example/w.tar.gz")),
        (f"https://h.example/w.bin#sha256={SHA}", UrlSource("https://h.example/w.bin", SHA)),
        ("/srv/models/llama", LocalSource("/srv/models/llama")),
        ("/srv/models/llama/", LocalSource("/srv/models/llama")),
    ],
)
def test_accepted_forms(text, expected):
    assert parse_weights_uri(text) == expected


def test_canonical_uri_round_trips():
    for text in (
        "hf://org/model@main",
        "r2://bucket/key",
        f"https://h.io/x#sha256={SHA}",
        "/data/m",
    ):
        assert parse_weights_uri(text).uri() == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "model",
        "relative/path",
        "./x",
        "ftp://host/x",
        "hf://",
        "hf://name-only",
        "hf://a/b/c",
        "hf://org/model@",
        "hf://org/model@../../x",
        "r2://",
        "r2://UPPER/x",
        "r2://b/../x",
        "https://",
        "https://user:pw@host/x",
        "https://h/x#md5=abc",
        "https://h/x#sha256=xyz",
        "https://h:notaport/x",
        "http://h/x",
        "/a/../b",
        "/a//b",
        "/a/./b",
        "/a\x00b",
        "file:///etc/passwd",
    ],
)
def test_rejected_forms_say_why(text):
    with pytest.raises(InvalidWeightsSource) as info:
        parse_weights_uri(text)
    assert str(info.value)


def test_http_only_with_opt_in():
    assert parse_weights_uri("http://mirror/x", allow_http=True) == UrlSource("http://mirror/x")
