"""Canvas: workflows of tasks, as data. Signatures, chains, groups and chords.

    add.s(2, 2)                      # a signature (add.si: immutable)
    chain(add.s(2, 2), add.s(4))     # or add.s(2, 2) | add.s(4): 8
    group(add.s(i, i) for i in ...)  # in parallel; GroupResult
    chord(header, tsum.s())          # or group(...) | tsum.s(): the callback runs once

Every form is awaitable: `result = await workflow.delay()`, `await result.get(timeout=10)`.
"""

from __future__ import annotations

from .chain import Chain, chain
from .chord import Chord, chord
from .group import Group, group
from .group_result import GroupResult
from .node import SignatureOptions, Workflow
from .signature import Signature, signature
from .workflow_result import WorkflowResult

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "GroupResult",
    "Signature",
    "SignatureOptions",
    "Workflow",
    "WorkflowResult",
    "chain",
    "chord",
    "group",
    "signature",
]
