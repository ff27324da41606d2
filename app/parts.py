"""Each file of a multipart body counted as it streams, so that a file over its limit is refused before
the form parser writes the rest of it to disk (it spools every file over 1 MB to a temporary file)."""

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class FilePartSizes:
    """Feed it the body's chunks; :attr:`over` names the first file part larger than ``limit`` bytes.

    A body it cannot parse is left to the form parser, which answers it with its own error.
    """

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        #: The file name of the first part over the limit (None: none yet).
        self.over: str | None = None
        self._size = 0
        self._filename: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._broken = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_part,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    @classmethod
    def for_request(cls, content_type: str, limit: int) -> "FilePartSizes | None":
        """A counter for a multipart body of ``content_type`` (None for any other body)."""
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return None
        return cls(boundary, limit)

    def feed(self, chunk: bytes) -> str | None:
        """Count ``chunk``; the name of a file part it takes over the limit, if any."""
        if self._broken or self.over is not None or not chunk:
            return self.over
        try:
            self._parser.write(chunk)
        except FormParserError:
            self._broken = True
        return self.over

    def _begin(self) -> None:
        self._size, self._filename, self._disposition = 0, None, b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._filename is None:
            return  # a plain field: the form parser bounds those itself
        self._size += end - start
        if self._size > self.limit and self.over is None:
            self.over = self._filename or "upload"
