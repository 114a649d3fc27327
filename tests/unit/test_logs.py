"""omni/logs.py: one JSON object per line on stderr, the fields an operator's pipeline reads, and
no terminal escapes (uvicorn adds a `color_message` copy of its messages with ANSI colours)."""

from __future__ import annotations

import json
import logging

import pytest

from omni import logs


def test_each_record_is_one_json_line_without_terminal_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO")
        # As uvicorn logs "Started server process [%d]" (uvicorn/server.py).
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 42, extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"}
        )
        logging.getLogger("omni.test").warning("two\nlines in one message")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("INFO", "uvicorn.error", "Started server process [42]"),
        ("WARNING", "omni.test", "two\nlines in one message"),
    ]
    assert all("\x1b" not in line and "\\u001b" not in line for line in lines)
