"""The booking profile of a GPU: when it is taken and by whom, the gaps left before its last booking,
and which of a node's ready GPUs a job gets. Float seconds from `now`; used by the policy only."""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import NamedTuple

from gpuyard.scheduling.model import RuntimeSource

INF = math.inf
# Gaps kept per GPU (a bound on the work of a search), and the shortest worth keeping (no job is that short).
# Whether a stretch holds a length is always asked as `end - start >= length`, the way gap lengths are
# measured: `start + length <= end` rounds differently and would let a search skip a gap that fits.
MAX_GAPS = 32
MIN_GAP_S = 1.0


class Holder(NamedTuple):
    """Who holds a GPU until a booking's end, and how sure that end is."""

    job_id: int
    progress: float | None
    source: RuntimeSource


@dataclass(slots=True)
class Gpu:
    index: int
    tail: float  # free from here on, for good
    tail_holder: Holder | None
    # Gaps before the tail, sorted by start: (start, end, holder of the booking that ends at start).
    holes: list[tuple[float, float, Holder | None]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # the holes' starts, for bisect
    max_gap: float = 0.0  # the longest hole

    def _hole_at(self, start: float) -> int:
        """The index of the gap containing `start`, or -1."""
        i = bisect.bisect_right(self.starts, start) - 1
        return i if i >= 0 and start < self.holes[i][1] else -1

    def free_for(self, start: float, length: float) -> bool:
        if start >= self.tail:
            return True
        i = self._hole_at(start)
        return i >= 0 and self.holes[i][1] - start >= length

    def first_start(self, floor: float, length: float, bound: float) -> float:
        """The earliest start in [floor, bound] from which this GPU is free for `length`; INF if none."""
        if self.max_gap >= length and floor < self.tail:
            holes = self.holes
            i = bisect.bisect_right(self.starts, floor) - 1
            if i >= 0 and holes[i][1] - floor >= length:
                return floor  # the gap around the floor holds it
            for k in range(i + 1, len(holes)):
                start, end, _ = holes[k]
                if start > bound:
                    return INF
                if end - start >= length:
                    return start
        start = self.tail if self.tail > floor else floor
        return start if start <= bound else INF

    def stretches(self, floor: float, length: float, bound: float, out: list[tuple[float, float]]) -> None:
        """Append (first, end) for each stretch of this GPU in which any start s with first <= s and
        end - s >= length finds it free for `length`, with first in [floor, bound]: the gaps that can hold
        `length`, then the tail."""
        if self.max_gap >= length and floor < self.tail:
            holes = self.holes
            i = bisect.bisect_right(self.starts, floor) - 1
            if i >= 0 and holes[i][1] - floor >= length:
                out.append((floor, holes[i][1]))
            for k in range(i + 1, len(holes)):
                start, end, _ = holes[k]
                if start > bound:
                    return
                if end - start >= length:
                    out.append((start, end))
        start = self.tail if self.tail > floor else floor
        if start <= bound:
            out.append((start, INF))

    def busy_from(self, start: float) -> float:
        """When this GPU is next booked from `start` on (INF: never; `start`: it is booked then)."""
        if start >= self.tail:
            return INF
        i = self._hole_at(start)
        return self.holes[i][1] if i >= 0 else start

    def holder_before(self, start: float) -> tuple[float, Holder | None]:
        """The booking that ends last before `start` on this GPU: its end and its holder."""
        if start >= self.tail:
            return self.tail, self.tail_holder
        i = self._hole_at(start)
        return (self.holes[i][0], self.holes[i][2]) if i >= 0 else (0.0, None)

    def book(self, start: float, end: float, holder: Holder) -> None:
        if start >= self.tail:
            # Only the first gaps are kept: far ahead, a gap left out merely stays idle in the plan.
            if start - self.tail >= MIN_GAP_S and len(self.holes) < MAX_GAPS:
                self.holes.append((self.tail, start, self.tail_holder))
                self.starts.append(self.tail)
                if start - self.tail > self.max_gap:
                    self.max_gap = start - self.tail
            self.tail, self.tail_holder = end, holder
            return
        i = self._hole_at(start)
        if i < 0 or end > self.holes[i][1]:
            raise AssertionError("booked a GPU that is not free")  # pragma: no cover - guarded by free_for
        hole_start, hole_end, before = self.holes[i]
        pieces = []
        if start > hole_start:
            pieces.append((hole_start, start, before))
        if end < hole_end:
            pieces.append((end, hole_end, holder))
        self.holes[i : i + 1] = pieces
        self.starts[i : i + 1] = [p[0] for p in pieces]
        if hole_end - hole_start >= self.max_gap:  # the longest gap may be the one just split
            self.max_gap = max([e - s for s, e, _ in self.holes], default=0.0)


@dataclass(slots=True)
class Node:
    name: str
    gpus: list[Gpu]  # GPUs gpuyard may use (outside-held ones left out)
    size: int  # all GPUs of the node, outside-held included
    links: frozenset[tuple[int, int]]
    tails: list[float] = field(default_factory=list)  # the GPUs' tails, sorted (see `refresh`)
    max_gap: float = 0.0  # the longest gap of any of its GPUs

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute the summaries after a booking on this node."""
        self.tails = sorted([g.tail for g in self.gpus])
        self.max_gap = max([g.max_gap for g in self.gpus], default=0.0)

    def earliest(self, count: int, length: float, floor: float, bound: float) -> float:
        """The earliest start in [floor, bound] at which `count` GPUs of this node are free for `length`;
        INF if there is none. Exact: every gap is tried (a GPU keeps at most MAX_GAPS of them)."""
        if count > len(self.gpus):
            return INF
        if self.max_gap < length:  # no gap can hold it: only the tails can
            start = self.tails[count - 1]
            start = floor if start < floor else start
            return start if start <= bound else INF
        if count == 1:
            best = INF
            for gpu in self.gpus:
                start = gpu.first_start(floor, length, bound)
                if start < best:
                    best = bound = start
            return best
        usable = [g for g in self.gpus if g.max_gap >= length or g.tail <= bound]
        if len(usable) < count:
            return INF
        stretches: list[tuple[float, float]] = []
        for gpu in usable:
            gpu.stretches(floor, length, bound, stretches)
        # Sweep the stretches by their first start; a GPU's stretches never overlap, so the open ones at a
        # moment belong to distinct GPUs: the first moment `count` are open is the earliest start.
        stretches.sort()
        ends: list[float] = []
        for start, end in stretches:
            while ends and ends[0] - start < length:
                heapq.heappop(ends)
            heapq.heappush(ends, end)
            if len(ends) >= count:
                return start
        return INF


class Fit(NamedTuple):
    start: float
    node: Node
    gpus: tuple[Gpu, ...]


def free_at(node: Node, start: float) -> int:
    """How many of the node's GPUs are free for good from `start` on."""
    return bisect.bisect_right(node.tails, start)


def choose(ready: list[Gpu], count: int, start: float, links: frozenset[tuple[int, int]]) -> tuple[Gpu, ...]:
    """Which of the ready GPUs: linked sets for multi-GPU jobs; for one GPU, spare an intact linked pair;
    then the GPUs that freed last (long-free ones stay together), then the lowest indices."""

    def freed(g: Gpu) -> float:
        return g.tail if g.tail <= start else max((s for s, _, _ in g.holes if s <= start), default=0.0)

    if len(ready) == count:
        return tuple(ready)
    if not links and count == 1:
        return (max(ready, key=lambda g: (freed(g), -g.index)),)
    if links and count >= 2 and len(ready) <= 12:
        best = max(
            combinations(sorted(ready, key=lambda g: g.index), count),
            key=lambda c: (link_count(c, links), sum(freed(g) for g in c), [-g.index for g in c]),
        )
        return tuple(best)
    ready_indices = {g.index for g in ready}

    def spare_pairs(g: Gpu) -> int:
        # 1 when its linked partner is ready too: taking it would break a free NVLink pair.
        return sum(1 for a, b in links if g.index in (a, b) and (b if a == g.index else a) in ready_indices)

    ordered = sorted(ready, key=lambda g: (spare_pairs(g) if count == 1 else 0, -freed(g), g.index))
    return tuple(ordered[:count])


def link_count(gpus: tuple[Gpu, ...], links: frozenset[tuple[int, int]]) -> int:
    indices = {g.index for g in gpus}
    return sum(1 for a, b in links if a in indices and b in indices)
