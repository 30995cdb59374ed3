"""`prov up ... --engine auto`: which named engine each new environment goes to.

Pure. Each environment goes to the engine with the most memory still free
(MemAvailable as the engine host reports it), which then counts as that much
poorer by the environment's memory limit, or by an estimate when it has none;
ties go to the engine running fewer containers, then to the name. So `prov up
a b c d --engine auto` spreads four environments over two equal engines two
and two, and a busy engine gets fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConflictError

# What an agent environment without a --memory limit is counted as using:
# agent CLIs (Node) plus a build or test run of the project.
ESTIMATE = 2 << 30


@dataclass(frozen=True)
class Candidate:
    name: str
    available: int  # bytes
    running: int = 0


def spread(candidates: list[Candidate], needs: list[int | None]) -> list[str]:
    """The engine for each environment, in order; `needs`: each one's memory
    limit (None: ESTIMATE)."""
    if not candidates:
        raise ConflictError(
            "--engine auto found no engine to place environments on",
            "No named engine answered (or none is named).",
            "add engines with `prov engine add NAME ssh://HOST` and check them with "
            "`prov engine ls`.",
        )
    left = {c.name: c.available for c in candidates}
    running = {c.name: c.running for c in candidates}
    chosen = []
    for need in needs:
        best = max(sorted(left), key=lambda n: (left[n], -running[n]))
        chosen.append(best)
        left[best] -= need or ESTIMATE
        running[best] += 1
    return chosen
