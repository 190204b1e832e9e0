"""File transfers for telepot programs: chatdaemon's own (chatdaemon/transfer.py)."""

from ..transfer import CHUNK, MAX_DOWNLOAD, MAX_UPLOAD, FileAPI, TransferError, Upload

__all__ = ["CHUNK", "MAX_DOWNLOAD", "MAX_UPLOAD", "FileAPI", "TransferError", "Upload"]
