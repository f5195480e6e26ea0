"""A request to start a run, as a client sends it to the supervisor, and its preflight.

The client checks the request itself first (so bad input is one line and exit 2 before any
supervisor starts); the supervisor checks it again, as the person's terminal would (their
environment, their working directory), since the repository may have changed in between.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..pipeline import Prepared, prepare
from ..plan import PlanError, adhoc_plan, load_plan
from ..vcs.base import UsageError
from .host import CommandError


@dataclass
class StartRequest:
    #: the plan file (absolute), or None for ad-hoc ``tasks`` (NAME=PROMPT)
    target: str | None
    repo: str
    tasks: list[str] = field(default_factory=list)
    agent: str | None = None
    base: str | None = None
    verify: str | None = None
    max_parallel: int | None = None
    approve: str | None = None
    keep_worktrees: bool = False
    sandbox: str | None = None
    cwd: str = ""
    env: dict[str, str] | None = None
    #: a follow-up to a task of an ended run (``run``, ``task``, ``message``): a run that carries it on
    follow_up: dict[str, str] | None = None
    #: the id of an ended run whose leftovers to review again (a new run, straight to the review)
    review: str | None = None
    #: ``corral land``'s work in the supervisor: the id of an ended run whose kept result to land
    land: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StartRequest":
        names = set(cls.__dataclass_fields__)
        req = cls(**{k: v for k, v in data.items() if k in names})
        if not req.repo or not os.path.isabs(req.repo):
            raise CommandError("a start request needs the repository as an absolute path")
        return req

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prepare_request(req: StartRequest) -> Prepared:
    """Load the plan and run preflight; raises :class:`CommandError` (one line) on any problem."""
    try:
        if req.review:
            from ..continuation import prepare_review

            return await prepare_review(req.repo, req.review, env=req.env, cwd=req.cwd or None)
        if req.follow_up:
            from ..continuation import prepare_follow_up

            f = req.follow_up
            return await prepare_follow_up(req.repo, str(f.get("run")), str(f.get("task")), str(f.get("message")),
                                           env=req.env, cwd=req.cwd or None)
        plan = load_plan(req.target) if req.target else adhoc_plan(req.tasks, req.agent or "claude")
        return await prepare(plan, req.repo, base=req.base, verify=req.verify, max_parallel=req.max_parallel,
                             approve=req.approve, sandbox=req.sandbox, env=req.env, cwd=req.cwd or None)
    except (PlanError, UsageError) as exc:
        raise CommandError(str(exc)) from None
