"""`hydra.utils.instantiate` with one-line user errors.

Hydra wraps whatever a `_target_` raises in a multi-line InstantiationException ("Error in call
to target ...", the original repr, full_key). A labquant UserError inside it (`model.stem must
be one of ...`) already names the setting and the fix, so it comes back out unchanged; anything
else (an unknown keyword, a target that cannot be imported) becomes one ConfigError line that
names the setting group and the target.
"""

from __future__ import annotations

from typing import Any

import hydra.utils
from hydra.errors import InstantiationException

from labquant.errors import ConfigError, UserError


def _chain(error: BaseException) -> list[BaseException]:
    """`error`, then its causes and contexts, depth first, each once."""
    seen: list[BaseException] = []
    stack = [error]
    while stack:
        current = stack.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)
    return seen


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(error).__name__


def _target(node: Any) -> str | None:
    try:
        target = node.get("_target_")
    except Exception:  # not a mapping, or an interpolation that does not resolve
        return None
    return target if isinstance(target, str) else None


def _reason(error: BaseException, chain: list[BaseException]) -> str:
    if isinstance(error, InstantiationException) and str(error).startswith("Error locating"):
        return f"cannot import it ({_first_line(chain[-1])})"  # the innermost says why
    original = next((e for e in chain if not isinstance(e, InstantiationException)), error)
    return _first_line(original)


def instantiate(node: Any, setting: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node, **kwargs)`; `setting` is where the user sets `node`
    (`model`, `data`, `callbacks.model_checkpoint`), named in the error.

    Raises the UserError found in the failure's cause chain as it is, else
    `ConfigError("model=<_target_>: <first line of the original error>; check the model.*
    settings")`.
    """
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as error:  # re-raised below, outside this block, so no context is added
        failure = error
    chain = _chain(failure)
    user_error = next((e for e in chain if isinstance(e, UserError)), None)
    if user_error is not None:
        raise user_error
    target = _target(node)
    shown = f"{setting}={target}" if target else setting
    reason = " ".join(_reason(failure, chain).split())  # one line, whatever the message held
    raise ConfigError(f"{shown}: {reason}; check the {setting}.* settings") from failure
