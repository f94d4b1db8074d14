"""After a group fails as one batch: its sequences run one by one, so that only the culprits' requests fail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from .round import Outcome, Round

RunGroups = Callable[[Round, list[np.ndarray]], Awaitable[list[Outcome]]]


async def run_one_by_one(work: Round, group: np.ndarray, failure: Exception, run: RunGroups) -> None:
    """Run `group`'s sequences alone, each through `run`; a job fails with what its own sequence raised
    (a group of one fails with `failure` without running again). Jobs already gone are skipped."""
    if len(group) == 1:
        work.jobs[work.job_of[group[0]]].fail(failure)
        return
    for i, index in enumerate(group.tolist()):
        job = work.jobs[work.job_of[index]]
        if job.gone:
            continue
        [outcome] = await run(work, [group[i:i + 1]])
        if isinstance(outcome, Exception):
            job.fail(outcome)
