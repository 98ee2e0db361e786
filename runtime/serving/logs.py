"""Structured logs: one JSON object per line, with the fields a log pipeline can index."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonLineFormatter", "configure_json_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    """Lines of ``{"ts", "level", "logger", "msg", ...}``; extras come from ``extra=``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_json_logging(level: int = logging.INFO, stream=None) -> None:
    """Route the server and uvicorn loggers to JSON lines (called by serve, not on import)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    for name in ("stn_deploy.runtime", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
