"""ResponseParser.reset: one parser per upstream connection parses each exchange as a new
parser would, whatever the previous exchange left behind."""

from __future__ import annotations

import pytest

from trio_mesh.protocols.http1 import H1Error, ResponseParser

NEXT = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"

PREVIOUS = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", False),
    "head-answer-with-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
    "head-answer-chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", False),
    "304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False),
    "after-103": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        False,
    ),
    "unfinished": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False),
    "with-trailing-bytes": (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA", False),
}


@pytest.mark.parametrize("previous", list(PREVIOUS.values()), ids=list(PREVIOUS))
@pytest.mark.parametrize("head_request", [False, True])
def test_after_reset_parses_as_a_new_parser(
    previous: tuple[bytes, bool], head_request: bool
) -> None:
    data, was_head = previous
    p = ResponseParser(head_request=was_head)
    p.feed(data)
    p.reset(head_request=head_request)
    fresh = ResponseParser(head_request=head_request)
    assert p.feed(NEXT) == fresh.feed(NEXT)
    assert (p.complete, p.trailing, p.head_raw) == (fresh.complete, fresh.trailing, fresh.head_raw)


def test_after_reset_an_error_is_forgotten_and_limits_stay() -> None:
    p = ResponseParser()
    with pytest.raises(H1Error):
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    p.reset()
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")[-1].trailers is None
    assert p.complete


def test_many_exchanges_on_one_parser() -> None:
    p = ResponseParser()
    for i in range(50):
        p.reset(head_request=i % 3 == 0)
        events = p.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + (b"" if i % 3 == 0 else b"ok")
        )
        assert events[0].status == 200 and p.complete and not p.trailing
