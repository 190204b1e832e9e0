"""File transfers over the Bot API: multipart uploads and file downloads.

chatdaemon's Bot API client sends JSON, which cannot carry a file. `FileAPI` wraps it: a
call whose parameters hold an `Upload` goes out as multipart/form-data instead, through
the same sender (rate limits, retries); everything else is passed through unchanged.
Both a bot's own ChatHandler and a telepot program under `chatdaemon telepot` use it.
The token is part of both URLs, so no error raised here carries a URL or the text of an
exception from `requests`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from .errors import NetworkError, TelegramError
from .telegram import BotAPI, _result_of

log = logging.getLogger(__name__)

MAX_DOWNLOAD = 20 * 1024 * 1024   # getFile serves files up to 20 MB
MAX_UPLOAD = 50 * 1024 * 1024     # the Bot API accepts uploads up to 50 MB
MAX_PHOTO = 10 * 1024 * 1024      # and photos up to 10 MB
CHUNK = 64 * 1024


class TransferError(NetworkError):
    """An upload or download failed without an answer from the Bot API."""


@dataclass(frozen=True)
class Upload:
    """A file to send, read once so that a retried call sends the same bytes."""

    filename: str
    data: bytes

    def __repr__(self) -> str:
        return f"Upload({self.filename!r}, {len(self.data)} bytes)"

    @classmethod
    def of(cls, value: Any, field: str) -> Upload:
        """An open binary file, telepot's (filename, file) pair, or a pathlib.Path (a plain
        string stays what the Bot API makes of it: a file_id or a URL)."""
        if isinstance(value, Upload):
            return value
        if isinstance(value, os.PathLike):
            with open(value, "rb") as handle:
                return cls.of(handle, field)
        filename = None
        if isinstance(value, tuple) and len(value) == 2:
            filename, value = value
        if not (isinstance(value, io.IOBase) or hasattr(value, "read")):
            raise TypeError(f"{field} must be a file id, a URL, a pathlib.Path or a file opened "
                            "in binary mode")
        limit = MAX_PHOTO if field == "photo" else MAX_UPLOAD
        data = value.read(limit + 1)   # memory stays bounded whatever the file's size
        if isinstance(data, str):
            raise TypeError(f"{field}: open the file in binary mode ('rb')")
        if len(data) > limit:
            raise ValueError(f"{field}: the file is larger than the Bot API's "
                             f"{limit // (1024 * 1024)} MB")
        name = filename or os.path.basename(str(getattr(value, "name", "") or field))
        return cls(name, data)


class FileAPI:
    """A BotAPI that can also upload (multipart) and download files."""

    def __init__(self, client: BotAPI, token: str, api_url: str,
                 timeout: tuple[float, float] = (10.0, 120.0)):
        self._client = client
        self._method_base = f"{api_url.rstrip('/')}/bot{token}/"
        self._file_base = f"{api_url.rstrip('/')}/file/bot{token}/"
        self._timeout = timeout

    def __repr__(self) -> str:
        return "FileAPI(<token redacted>)"

    def close(self) -> None:
        """Close the JSON client's kept-alive connections."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        params = params or {}
        if not any(isinstance(value, Upload) for value in params.values()):
            return self._client.call(method, params, timeout)
        return self._upload(method, params)

    def _upload(self, method: str, params: dict) -> Any:
        fields, files = {}, {}
        for key, value in params.items():
            if isinstance(value, Upload):
                files[key] = (value.filename, value.data)
            elif isinstance(value, str):
                fields[key] = value
            else:  # multipart fields are text: objects and numbers go as JSON
                fields[key] = json.dumps(value, ensure_ascii=False)
        multipart = getattr(self._client, "call_multipart", None)
        if multipart is not None:  # the Bot API client's own pooled connections and errors
            return multipart(method, fields, files)
        import requests  # only bots that upload pay for it (about 10 MB on a Pi)
        try:
            response = requests.post(self._method_base + method, data=fields, files=files,
                                     timeout=self._timeout)
        except requests.Timeout:
            raise TransferError(method, "no answer in time") from None
        except requests.RequestException as exc:
            raise TransferError(method, f"upload failed ({type(exc).__name__})") from None
        with response:
            return _result_of(method, response.status_code, response.content)

    def download(self, file_path: str, dest: Any) -> int:
        """Write the file at `file_path` into `dest`; the number of bytes written.

        Raises TelegramError (method "download_file") when the file server refuses.
        """
        import requests  # only bots that download pay for it
        try:
            response = requests.get(self._file_base + file_path.lstrip("/"), stream=True,
                                    timeout=self._timeout)
        except requests.Timeout:
            raise TransferError("download_file", "no answer in time") from None
        except requests.RequestException as exc:
            raise TransferError("download_file", f"download failed ({type(exc).__name__})") from None
        with response:
            if response.status_code != 200:
                raise TelegramError("download_file", response.status_code, response.text[:200])
            written = 0
            try:
                for chunk in response.iter_content(CHUNK):
                    written += len(chunk)
                    if written > MAX_DOWNLOAD:
                        raise ValueError(f"{file_path}: larger than the Bot API's 20 MB for downloads")
                    dest.write(chunk)
            except requests.RequestException as exc:
                raise TransferError("download_file", f"download broke off ({type(exc).__name__})") \
                    from None
        return written
