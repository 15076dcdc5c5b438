"""The max-min solver: closed forms, and properties on random graphs (capacity, bottleneck optimality,
bundling), plus a plain reference implementation."""
import numpy as np
from hypothesis import given, settings, strategies as st

from moesim.network import max_min_rates
from moesim.network.routing import Router
from test_network_gen import flow_pairs, random_topologies


def reference_max_min(routes: list[dict[int, float]], capacity: np.ndarray) -> np.ndarray:
    """Textbook progressive filling, one flow at a time (slow, obviously right)."""
    n = len(routes)
    rate = np.zeros(n)
    frozen = [False] * n
    cap = capacity.astype(float).copy()
    while not all(frozen):
        load = np.zeros(len(cap))
        for i, r in enumerate(routes):
            if not frozen[i]:
                for l, f in r.items():
                    load[l] += f
        used = [l for l in range(len(cap)) if load[l] > 0]
        delta = min(cap[l] / load[l] for l in used)
        for l in used:
            cap[l] -= load[l] * delta
        for i in range(n):
            if not frozen[i]:
                rate[i] += delta
        sat = {l for l in used if cap[l] <= 1e-9 * capacity[l]}
        for i, r in enumerate(routes):
            if not frozen[i] and sat & set(r):
                frozen[i] = True
    return rate


def test_single_link_and_shared_bottleneck():
    # link 0 (10) shared by flows 0 and 1; flow 1 also crosses link 1 (3): flow 1 gets 3, flow 0 the rest
    rates = max_min_rates([0, 1, 1], [0, 0, 1], [1.0, 1.0, 1.0], np.array([10.0, 3.0]))
    assert rates.tolist() == [7.0, 3.0]
    # a bundle of 4 identical flows on a 10-unit link next to a single flow: 2 each
    rates = max_min_rates([0, 1], [0, 0], [4.0, 1.0], np.array([10.0]))
    assert rates.tolist() == [2.0, 2.0]
    # ECMP: one flow split half/half over two links of 1 and 3 gets 2 (the thin half saturates)
    assert max_min_rates([0, 0], [0, 1], [0.5, 0.5], np.array([1.0, 3.0])).tolist() == [2.0]


@st.composite
def random_problem(draw):
    topo = draw(random_topologies(costs=False))
    return topo, draw(flow_pairs(topo))


def _solve(topo, pairs, counts=None):
    s, t = np.array(pairs).T
    r = Router(topo).routes(s, t)
    rows = r.pair_of_entry
    counts = np.ones(len(pairs)) if counts is None else np.asarray(counts, float)
    rates = max_min_rates(rows, r.links, r.fracs * counts[rows], topo.link_capacity, len(pairs))
    return r, rows, rates


@settings(max_examples=80, deadline=None)
@given(random_problem())
def test_max_min_properties(problem):
    topo, pairs = problem
    r, rows, rates = _solve(topo, pairs)
    load = np.bincount(r.links, weights=r.fracs * rates[rows], minlength=topo.num_links)
    cap = topo.link_capacity
    assert np.all(load <= cap * (1 + 1e-9))                                  # feasibility
    sat = load >= cap * (1 - 1e-9)
    for i in range(len(pairs)):                                              # every flow has a bottleneck:
        mine = r.links[rows == i]                                            # a saturated link of its own
        ok = False                                                           # where nobody is faster
        for l in mine[sat[mine]]:
            others = rows[r.links == l]
            if rates[i] >= rates[others].max() * (1 - 1e-9):
                ok = True
        assert ok, (i, rates)
    routes = []
    for i in range(len(pairs)):
        d: dict[int, float] = {}
        for l, f in zip(r.links[rows == i].tolist(), r.fracs[rows == i].tolist()):
            d[l] = d.get(l, 0.0) + f
        routes.append(d)
    ref = reference_max_min(routes, cap)
    assert np.allclose(rates, ref, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(random_problem(), st.lists(st.integers(1, 4), min_size=14, max_size=14))
def test_bundling_equals_unbundled(problem, mult):
    topo, pairs = problem
    counts = mult[:len(pairs)]
    _, _, bundled = _solve(topo, pairs, counts)
    expanded = [p for p, c in zip(pairs, counts) for _ in range(c)]
    _, _, flat = _solve(topo, expanded)
    assert np.allclose(np.repeat(bundled, counts), flat, rtol=1e-12)
