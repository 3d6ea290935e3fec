"""The streaming validator on its own: bounded reads, normalisation, hashing."""

from __future__ import annotations

import io
import json

import pytest

from tuneloop_dataset.parsing import StreamValidator, UploadRejected, normalize_row


class CountingReader(io.BytesIO):
    """Records the largest single read, to prove lines are never buffered whole."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0

    def readline(self, size: int = -1) -> bytes:  # type: ignore[override]
        out = super().readline(size)
        self.largest = max(self.largest, len(out))
        return out


def test_long_lines_are_read_in_bounded_chunks():
    limit = 1024
    huge = b'{"instruction": "' + b"x" * (10 * limit * 1024) + b'", "output": "y"}\n'
    good = b'{"instruction": "a", "output": "b"}\n'
    src = CountingReader(good + huge + good)
    out = io.BytesIO()
    res = StreamValidator(max_line_bytes=limit).run(src, out)
    assert (res.valid, res.invalid, res.total_lines) == (2, 1, 3)
    assert res.errors[0]["line"] == 2 and res.errors[0]["code"] == "line_too_long"
    assert src.largest <= 1 << 20  # the 10 MB line was drained 1 MB at a time
    assert [json.loads(x)["line"] for x in out.getvalue().splitlines()] == [1, 3]


def test_normalisation_and_hash_ignore_formatting():
    a = b'{"instruction": "Do", "input": "", "output": "ok"}\n'
    b = b'{ "output":"ok" ,"instruction":"Do"}\r\n\n'
    ra = StreamValidator(max_line_bytes=1000).run(io.BytesIO(a), io.BytesIO())
    rb = StreamValidator(max_line_bytes=1000).run(io.BytesIO(b"\xef\xbb\xbf" + b), io.BytesIO())
    assert ra.sha256 == rb.sha256 and rb.bom and rb.crlf and rb.blank_lines == 1
    assert normalize_row({"instruction": "I", "input": "X", "output": "O"})[0] == [
        {"role": "user", "content": "I\n\nX"}, {"role": "assistant", "content": "O"}]


@pytest.mark.parametrize("head,code", [(b"\x1f\x8b\x08\x00", "compressed_upload"),
                                       (b"PK\x03\x04", "compressed_upload"),
                                       (b"\xff\xfe{\x00", "unsupported_encoding"),
                                       (b"PAR1", "unsupported_format")])
def test_sniffed_formats(head, code):
    with pytest.raises(UploadRejected) as exc:
        StreamValidator(max_line_bytes=100).run(io.BytesIO(head + b"rest"), None)
    assert exc.value.code == code and exc.value.status == 415


def test_size_limit():
    body = b'{"instruction": "a", "output": "b"}\n' * 10_000
    with pytest.raises(UploadRejected) as exc:
        StreamValidator(max_line_bytes=100, max_bytes=50_000).run(io.BytesIO(body), None)
    assert exc.value.status == 413
