"""`conda.plugins`: the hook marker and the plugin types the plugin yields, with conda's
fields. Tests delete or replace names here to act as older conda releases."""

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional


def hookimpl(function):
    """pluggy's HookimplMarker("conda"), reduced to marking the function."""
    function.conda_impl = {}
    return function


class CondaPostCommand(NamedTuple):
    name: str
    action: Callable[[str], None]
    run_for: set


@dataclass
class CondaHealthCheck:
    name: str
    action: Callable[[str, bool], None]
    fixer: Optional[Callable] = None
    summary: Optional[str] = None
    fix: Optional[str] = None


@dataclass
class CondaPostTransactionAction:
    name: str
    action: type
