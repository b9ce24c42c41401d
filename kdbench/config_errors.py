"""Pydantic validation errors as kdbench's one-line messages: the field, the bad value and what is allowed."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """Bad input: each line names the field, the bad value and what is allowed."""


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain", "function-wrap"):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def format_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Model``, ``Model | None`` or ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (model := _model_in(argument)) is not None:
            return model
    return None


def _allowed_fields(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model that holds ``loc``'s last part (list indices and dict keys skipped)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            model = _model_in(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def validation_lines(error: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    from kdbench.registry import closest_match_hint

    lines = []
    for item in error.errors(include_url=False):
        location = _format_location(tuple(p for p in item["loc"] if not str(p).startswith("function-")))
        message = item["msg"].removeprefix("Value error, ")
        if message.startswith(("datasets[", "pairs[", "methods[", "override")):
            lines.append(message)  # the validator already named the entry
        elif item["type"] in ("missing",):
            lines.append(f"{location}: required field is missing")
        elif item["type"] == "extra_forbidden":
            allowed = _allowed_fields(root, item["loc"]) if root is not None else []
            hint = (f"{closest_match_hint(str(item['loc'][-1]), allowed)}; allowed: {', '.join(allowed)}"
                    if allowed else "")
            lines.append(f"{location}: unknown field{hint}")
        elif (isinstance(item.get("input"), (str, int, float, bool, list)) and f"'{item['input']}'" not in message
              and not message.startswith(f"{item['loc'][-1]} = ")):  # the validator named the value already
            lines.append(f"{location} = {format_value(item['input'])}: {message}")
        else:
            lines.append(f"{location}: {message}")
    return lines
