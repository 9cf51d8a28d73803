"""Structured logs: one JSON object per line on stderr, for uvicorn's own messages and the access log."""
from __future__ import annotations

import json
import logging
import time

ACCESS = logging.getLogger("dgsnet.serve.access")


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", ...the record's `fields`}: a log shipper parses each line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_config(level: str = "info") -> dict:
    """uvicorn's log_config: its loggers and ours through JsonFormatter; uvicorn's text access log off
    (the server writes its own, with the fields below)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "loggers": {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "dgsnet.serve", "dgsnet")}
                   | {"uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False}},
    }


def access(method: str, path: str, status: int, seconds: float, client: str | None, **fields) -> None:
    ACCESS.info("%s %s %d", method, path, status, extra={"fields": {
        "event": "access", "method": method, "path": path, "status": status,
        "duration_ms": round(seconds * 1000.0, 3), "client": client, **fields}})
