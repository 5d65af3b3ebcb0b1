"""The nodes of one pass and the index the policy searches them with.

For each GPU count k the index keeps every node's k-th earliest free-for-good time (its tails), and each
node's longest gap. A job's earliest start on tails alone is then one `min` over a list; only the nodes
with a gap long enough for the job are searched one by one, each only up to the best start found so far.
Times are float seconds from the pass's `now`, as in `booking`.
"""

from __future__ import annotations

import bisect

from gpuyard.scheduling.booking import INF, Fit, Gpu, Holder, Node, choose, free_at


class Cluster:
    """Online nodes sorted by name, with the index kept in step by `book`."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.position = {node.name: i for i, node in enumerate(nodes)}
        self.largest = max((len(n.gpus) for n in nodes), default=0)
        # kth_tail[k][i]: when k GPUs of node i are free for good (INF where it has fewer usable GPUs).
        self.kth_tail: list[list[float]] = [[] for _ in range(self.largest + 1)]
        for k in range(1, self.largest + 1):
            self.kth_tail[k] = [n.tails[k - 1] if len(n.gpus) >= k else INF for n in nodes]
        self.max_gap = [n.max_gap for n in nodes]

    def book(self, node: Node, gpus: tuple[Gpu, ...], start: float, end: float, holder: Holder) -> None:
        """Book [start, end) on these GPUs of the node; keep the node's summaries and the index in step."""
        tails = node.tails
        max_gap = node.max_gap
        shrunk = False
        for gpu in gpus:
            before = gpu.tail
            if start >= before:  # after its last booking: its tail moves on, a gap may open before it
                gpu.book(start, end, holder)
                del tails[bisect.bisect_left(tails, before)]
                bisect.insort(tails, gpu.tail)
                if gpu.max_gap > max_gap:
                    max_gap = gpu.max_gap
            else:  # inside a gap: the tails stay, the longest gap may shrink
                shrunk = shrunk or gpu.max_gap >= max_gap
                gpu.book(start, end, holder)
        if shrunk:
            max_gap = max([g.max_gap for g in node.gpus])
        node.max_gap = max_gap
        i = self.position[node.name]
        self.max_gap[i] = max_gap
        kth = self.kth_tail
        for k, tail in enumerate(tails, start=1):
            kth[k][i] = tail

    def earliest_fit(self, count: int, length: float, floor: float) -> Fit | None:
        """The earliest start >= floor at which one node has `count` GPUs free for `length`; at equal
        starts, the node with the fewest GPUs free for good then (large free sets stay whole), then the
        first by name. None when no node has that many usable GPUs."""
        if count < 1 or count > self.largest:
            return None
        if floor < 0.0:
            floor = 0.0
        kth = self.kth_tail[count]
        low = min(kth)
        if low == INF:
            return None
        best = floor if low < floor else low  # the earliest start on tails alone
        if length < INF and max(self.max_gap) >= length:
            return self._search_gaps(count, length, floor, best)
        # Only tails can hold it: the nodes whose count-th tail is the earliest (or before the floor).
        if low >= floor and kth.count(low) == 1:
            winner = self.nodes[kth.index(low)]
        else:
            tied = [i for i, tail in enumerate(kth) if tail <= best]
            winner = self.nodes[min(tied, key=lambda i: (free_at(self.nodes[i], best), i))]
        ready = [g for g in winner.gpus if g.tail <= best]  # no gap can hold it
        return Fit(best, winner, choose(ready, count, best, winner.links))

    def _search_gaps(self, count: int, length: float, floor: float, best: float) -> Fit:
        """`earliest_fit` when some node has a gap that may hold the job: those nodes are searched."""
        kth = self.kth_tail[count]
        found: dict[int, float] = {}  # nodes searched through their gaps: their earliest start
        for i, gap in enumerate(self.max_gap):
            if gap >= length:
                start = self.nodes[i].earliest(count, length, floor, best)
                if start <= best:
                    best = found[i] = start
        tied = [i for i, start in found.items() if start == best]
        # A node not searched starts when its count-th GPU frees for good (or at the floor).
        tied.extend(i for i, tail in enumerate(kth) if tail <= best and i not in found)
        index = tied[0] if len(tied) == 1 else min(tied, key=lambda i: (free_at(self.nodes[i], best), i))
        winner = self.nodes[index]
        ready = [g for g in winner.gpus if g.free_for(best, length)]
        return Fit(best, winner, choose(ready, count, best, winner.links))
