"""The API's answers: documents whose times are ISO 8601 UTC text (see :func:`pipeline.contract.iso`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline import contract

#: A MongoDB document as read, or an answer of the API.
Document = dict[str, Any]


def iso(moment: datetime | None) -> str | None:
    """``moment`` as ISO 8601 UTC text; None stays None (a field the document does not have)."""
    return None if moment is None else contract.iso(moment)


def jsonable(value: Any) -> Any:
    """``value`` with every datetime as ISO 8601 UTC text, as every answer of the API has them."""
    if isinstance(value, datetime):
        return contract.iso(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
