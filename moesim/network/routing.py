"""Routes between GPUs: minimum-cost paths (link ``cost``, one per hop by default) that pass through no
GPU other than their endpoints, with ECMP: the flow is split evenly over all minimum-cost paths (each
path carries 1/k), so a route is a set of (directed link, fraction) pairs.

How it scales: the non-GPU nodes H are peeled of pendant trees (a NIC hanging off a leaf, a PCIe
switch hanging off a CPU ...), which leaves a small *core* (leaf and spine switches). A GPU-to-GPU route
is then: first hop, up the tree, a core route (computed by multi-source, level-synchronous shortest-path
counting over the core, vectorised over sources), down the tree, last hop. Everything below is
vectorised over batches of GPU pairs and cached (core routes by core-node pair, GPU routes by rank pair).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from moesim.network.csr import RowCache, indptr_from_counts, ranges
from moesim.topology.model import Topology

_INF = np.iinfo(np.int64).max // 4


@dataclass
class Routes:
    """Routes of a batch of GPU pairs: pair i uses links[indptr[i]:indptr[i+1]] with the matching
    fractions (summing to 1 per path); ``latency`` is the path-averaged latency in seconds."""
    indptr: np.ndarray
    links: np.ndarray
    fracs: np.ndarray
    latency: np.ndarray

    @property
    def pair_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))


class Router:
    """ECMP router over a :class:`Topology` (see module docstring). Use :func:`router_for` to share one."""

    def __init__(self, topo: Topology):
        self.topo = topo
        n = len(topo.nodes)
        self.n = n
        src, dst, cost = topo.link_src, topo.link_dst, topo.link_cost
        gpu = topo.is_gpu
        h_link = ~gpu[src] & ~gpu[dst]
        link_of = {(int(u), int(v)): int(l) for l, (u, v) in enumerate(zip(src, dst)) if h_link[l]}
        nbrs: list[set[int]] = [set() for _ in range(n)]
        for (u, v) in link_of:
            nbrs[u].add(v)
            nbrs[v].add(u)

        # -- peel pendant trees off H ------------------------------------------------------------
        deg = [len(s) for s in nbrs]
        removed = np.zeros(n, dtype=bool)
        parent = np.full(n, -1, dtype=np.int64)
        queue = deque(x for x in range(n) if not gpu[x] and deg[x] == 1)
        order: list[int] = []
        while queue:
            x = queue.popleft()
            if removed[x] or deg[x] != 1:
                continue
            p = next(y for y in nbrs[x] if not removed[y])
            removed[x] = True
            parent[x] = p
            deg[x] = 0
            deg[p] -= 1
            order.append(x)
            if deg[p] == 1:
                queue.append(p)
        self.parent = parent
        self.up_link = np.full(n, -1, dtype=np.int64)
        self.down_link = np.full(n, -1, dtype=np.int64)
        up_cost = np.zeros(n, dtype=np.int64); up_miss = np.zeros(n, dtype=np.int64)
        down_cost = np.zeros(n, dtype=np.int64); down_miss = np.zeros(n, dtype=np.int64)
        for x in order:
            p = int(parent[x])
            lu, ld = link_of.get((x, p), -1), link_of.get((p, x), -1)
            self.up_link[x], self.down_link[x] = lu, ld
            if lu < 0:
                up_miss[x] = 1
            else:
                up_cost[x] = cost[lu]
            if ld < 0:
                down_miss[x] = 1
            else:
                down_cost[x] = cost[ld]
        self.root = np.arange(n, dtype=np.int64)
        self.depth = np.zeros(n, dtype=np.int64)
        self.cum_up = np.zeros(n, dtype=np.int64); self.miss_up = np.zeros(n, dtype=np.int64)
        self.cum_down = np.zeros(n, dtype=np.int64); self.miss_down = np.zeros(n, dtype=np.int64)
        for x in reversed(order):
            p = int(parent[x])
            self.root[x] = self.root[p]
            self.depth[x] = self.depth[p] + 1
            self.cum_up[x] = self.cum_up[p] + up_cost[x]; self.miss_up[x] = self.miss_up[p] + up_miss[x]
            self.cum_down[x] = self.cum_down[p] + down_cost[x]; self.miss_down[x] = self.miss_down[p] + down_miss[x]
        max_depth = int(self.depth.max()) if n else 0
        self.max_depth = max_depth
        anc = np.full((n, max_depth + 1), -1, dtype=np.int64)
        roots = np.nonzero(self.root == np.arange(n))[0]
        anc[roots, 0] = roots
        for x in reversed(order):
            d = self.depth[x]
            anc[x, :d] = anc[parent[x], :d]
            anc[x, d] = x
        self.anc = anc

        # -- the core: unpeeled non-GPU nodes and the links between them --------------------------
        core_nodes = np.nonzero(~gpu & ~removed)[0]
        self.core_index = np.full(n, -1, dtype=np.int64)
        self.core_index[core_nodes] = np.arange(len(core_nodes))
        self.nc = len(core_nodes)
        core_link = h_link & ~removed[src] & ~removed[dst]
        cl = np.nonzero(core_link)[0]
        cs, cd = self.core_index[src[cl]], self.core_index[dst[cl]]
        o = np.argsort(cs, kind="stable")
        self.out_ptr = indptr_from_counts(np.bincount(cs, minlength=self.nc))
        self.out_dst, self.out_link, self.out_cost = cd[o], cl[o], cost[cl][o]
        o = np.argsort(cd, kind="stable")
        self.in_ptr = indptr_from_counts(np.bincount(cd, minlength=self.nc))
        self.in_src, self.in_link, self.in_cost = cs[o], cl[o], cost[cl][o]
        self._bfs: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # core source -> (dist, sigma) over core
        self._core_routes = RowCache(extra=("dist", "sigma"))

        # -- GPU attachments ----------------------------------------------------------------------
        rank_of = topo.node_rank
        gpu_src, gpu_dst = gpu[src], gpu[dst]
        out_l = np.nonzero(gpu_src & ~gpu_dst)[0]
        o = np.argsort(rank_of[src[out_l]], kind="stable")
        out_l = out_l[o]
        self.att_out_ptr = indptr_from_counts(np.bincount(rank_of[src[out_l]], minlength=topo.num_gpus))
        self.att_out_node, self.att_out_link, self.att_out_cost = dst[out_l], out_l, cost[out_l]
        in_l = np.nonzero(~gpu_src & gpu_dst)[0]
        o = np.argsort(rank_of[dst[in_l]], kind="stable")
        in_l = in_l[o]
        self.att_in_ptr = indptr_from_counts(np.bincount(rank_of[dst[in_l]], minlength=topo.num_gpus))
        self.att_in_node, self.att_in_link, self.att_in_cost = src[in_l], in_l, cost[in_l]
        direct = np.nonzero(gpu_src & gpu_dst)[0]
        dkeys = rank_of[src[direct]] * topo.num_gpus + rank_of[dst[direct]]
        o = np.argsort(dkeys)
        self.direct_keys, self.direct_link = dkeys[o], direct[o]
        self._pairs = RowCache(extra=("latency",))

    # -- public ------------------------------------------------------------------------------------
    def routes(self, src_ranks, dst_ranks) -> Routes:
        """Routes for rank pairs (src_ranks[i] -> dst_ranks[i]; src != dst), cached by pair."""
        s = np.asarray(src_ranks, dtype=np.int64)
        t = np.asarray(dst_ranks, dtype=np.int64)
        if np.any(s == t):
            raise ValueError("a route needs two different ranks")
        keys = s * self.topo.num_gpus + t
        rows = self._pairs.find(keys)
        missing = rows < 0
        if missing.any():
            new_keys = np.unique(keys[missing])
            ns, nt = np.divmod(new_keys, self.topo.num_gpus)
            ptr, links, fracs = self._compute(ns, nt)
            lat = np.bincount(np.repeat(np.arange(len(new_keys)), np.diff(ptr)),
                              weights=fracs * self.topo.link_latency[links], minlength=len(new_keys))
            self._pairs.add(new_keys, np.diff(ptr), links, fracs, latency=lat)
            rows = self._pairs.find(keys)
        ptr, links, fracs = self._pairs.gather(rows)
        return Routes(ptr, links, fracs, self._pairs.extra["latency"][rows])

    # -- core shortest paths -------------------------------------------------------------------------
    def _ensure_bfs(self, sources: np.ndarray) -> None:
        todo = [int(c) for c in np.unique(sources) if int(c) not in self._bfs]
        if not todo:
            return
        chunk = max(1, 4_000_000 // max(self.nc, 1))
        for i in range(0, len(todo), chunk):
            batch = np.asarray(todo[i:i + chunk], dtype=np.int64)
            dist, sigma = self._multi_source_counts(batch)
            for j, c in enumerate(batch.tolist()):
                self._bfs[c] = (dist[j], sigma[j])

    def _multi_source_counts(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shortest-path distance (sum of costs) and number of shortest paths from each source to every
        core node; level-synchronous over distance values, vectorised over sources."""
        k, nc = len(sources), self.nc
        dist = np.full(k * nc, _INF, dtype=np.int64)
        sigma = np.zeros(k * nc, dtype=np.float64)
        start = np.arange(k) * nc + sources
        dist[start] = 0
        sigma[start] = 1.0
        level = 0
        while True:
            frontier = np.nonzero(dist == level)[0]
            if len(frontier):
                row, u = np.divmod(frontier, nc)
                cnt = self.out_ptr[u + 1] - self.out_ptr[u]
                e = ranges(self.out_ptr[u], cnt)
                if len(e):
                    key = np.repeat(row, cnt) * nc + self.out_dst[e]
                    nd = level + self.out_cost[e]
                    contrib = np.repeat(sigma[frontier], cnt)
                    before = dist[key]
                    np.minimum.at(dist, key, nd)
                    after = dist[key]
                    sigma[key[after < before]] = 0.0
                    hit = nd == after
                    np.add.at(sigma, key[hit], contrib[hit])
            pending = dist[dist > level]
            pending = pending[pending < _INF]
            if len(pending) == 0:
                break
            level = int(pending.min())
        return dist.reshape(k, nc), sigma.reshape(k, nc)

    def _core_lookup(self, rx: np.ndarray, ry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance and path count between core nodes (core indices), vectorised."""
        self._ensure_bfs(rx)
        uniq, inv = np.unique(rx, return_inverse=True)
        d = np.stack([self._bfs[int(c)][0] for c in uniq])
        sg = np.stack([self._bfs[int(c)][1] for c in uniq])
        return d[inv, ry], sg[inv, ry]

    def _core_paths(self, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
        """Row numbers in the core-route cache for core pairs (rx -> ry, rx != ry), computing missing ones
        by backward accumulation over each source's shortest-path DAG (per-path even split)."""
        keys = rx * self.nc + ry
        rows = self._core_routes.find(keys)
        if np.any(rows < 0):
            new = np.unique(keys[rows < 0])
            a = new // self.nc
            self._ensure_bfs(a)
            n_edges = max(len(self.in_src), 1)
            sources = np.unique(a)
            chunk = max(1, 4_000_000 // n_edges)
            for i in range(0, len(sources), chunk):
                part = sources[i:i + chunk]
                sel = np.isin(a, part)
                self._core_paths_batch(part, new[sel])
            rows = self._core_routes.find(keys)
        return rows

    def _core_paths_batch(self, sources: np.ndarray, keys: np.ndarray) -> None:
        nc = self.nc
        a, b = np.divmod(keys, nc)
        srow = np.searchsorted(sources, a)
        md = np.stack([self._bfs[int(c)][0] for c in sources])
        ms = np.stack([self._bfs[int(c)][1] for c in sources])
        # the shortest-path DAG of every source, as in-edge lists keyed by (source row, node)
        e_all = np.arange(len(self.in_src))
        e_v = np.repeat(np.arange(nc), np.diff(self.in_ptr))
        du = md[:, self.in_src]
        dv = md[:, e_v]
        sr, ei = np.nonzero((du < _INF) & (du + self.in_cost[None, :] == dv))
        ei = e_all[ei]
        dkey = sr * nc + e_v[ei]
        o = np.argsort(dkey, kind="stable")
        sr, ei = sr[o], ei[o]
        dag_ptr = indptr_from_counts(np.bincount(dkey[o], minlength=len(sources) * nc))
        n_pairs = len(keys)
        e_pair = np.arange(n_pairs)
        e_node = b.copy()
        e_flow = np.ones(n_pairs)
        out_pair, out_link, out_frac = [], [], []
        while len(e_pair):
            e_d = md[srow[e_pair], e_node]
            dmax = int(e_d.max())
            if dmax == 0:
                break
            sel = e_d == dmax
            rest = ~sel
            k_sel = e_pair[sel] * nc + e_node[sel]
            uk, ui = np.unique(k_sel, return_inverse=True)
            flow = np.bincount(ui.reshape(-1), weights=e_flow[sel])
            p_, v_ = np.divmod(uk, nc)
            dk = srow[p_] * nc + v_
            cnt = dag_ptr[dk + 1] - dag_ptr[dk]
            e = ei[ranges(dag_ptr[dk], cnt)]
            pp = np.repeat(p_, cnt)
            vv = np.repeat(v_, cnt)
            u = self.in_src[e]
            share = np.repeat(flow, cnt) * ms[srow[pp], u] / ms[srow[pp], vv]
            out_pair.append(pp); out_link.append(self.in_link[e]); out_frac.append(share)
            e_pair = np.concatenate([e_pair[rest], pp])
            e_node = np.concatenate([e_node[rest], u])
            e_flow = np.concatenate([e_flow[rest], share])
        pair = np.concatenate(out_pair) if out_pair else np.zeros(0, dtype=np.int64)
        links = np.concatenate(out_link) if out_link else np.zeros(0, dtype=np.int64)
        fracs = np.concatenate(out_frac) if out_frac else np.zeros(0)
        o = np.argsort(pair, kind="stable")
        self._core_routes.add(keys, np.bincount(pair, minlength=n_pairs), links[o], fracs[o],
                              dist=md[srow, b].astype(np.float64), sigma=ms[srow, b])

    # -- GPU pair routes -----------------------------------------------------------------------------
    def _compute(self, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, links, fracs) for rank pairs s[i] -> t[i]: the minimum-cost combinations of first hop,
        tree/core path and last hop, weighted by their path counts."""
        c = self._candidates(s, t)
        n_pairs = len(s)
        best = np.full(n_pairs, _INF, dtype=np.int64)
        np.minimum.at(best, c["pair"], c["cost"])
        np.minimum.at(best, c["d_pair"], c["d_cost"])
        if np.any(best >= _INF):
            bad = int(np.nonzero(best >= _INF)[0][0])
            raise ValueError(f"no route from rank {s[bad]} to rank {t[bad]}")
        keep = np.nonzero(c["cost"] == best[c["pair"]])[0]
        keep_d = c["d_cost"] == best[c["d_pair"]]
        sig_tot = np.bincount(c["pair"][keep], weights=c["sigma"][keep], minlength=n_pairs)
        sig_tot += np.bincount(c["d_pair"][keep_d], minlength=n_pairs)
        return self._emit(c, keep, c["d_pair"][keep_d], c["d_link"][keep_d], sig_tot)

    def _candidates(self, s: np.ndarray, t: np.ndarray) -> dict:
        """Every (first hop x, last hop y) combination per pair with its cost and path count, plus the
        direct GPU-GPU links."""
        n_pairs = len(s)
        no = self.att_out_ptr[s + 1] - self.att_out_ptr[s]
        ni = self.att_in_ptr[t + 1] - self.att_in_ptr[t]
        nc = no * ni
        pair = np.repeat(np.arange(n_pairs), nc)
        k = ranges(np.zeros(n_pairs, dtype=np.int64), nc)
        a, b = np.divmod(k, ni[pair]) if len(pair) else (k, k)
        oi = self.att_out_ptr[s[pair]] + a
        ii = self.att_in_ptr[t[pair]] + b
        x, y = self.att_out_node[oi], self.att_in_node[ii]
        rx, ry = self.root[x], self.root[y]
        same = rx == ry
        cost = np.full(len(pair), _INF, dtype=np.int64)
        sigma = np.ones(len(pair))
        lca = np.full(len(pair), -1, dtype=np.int64)
        if same.any():  # one hanging tree: the unique tree path through the lowest common ancestor
            xs, ys = x[same], y[same]
            dmin = np.minimum(self.depth[xs], self.depth[ys])
            eq = (self.anc[xs] == self.anc[ys]) & (np.arange(self.max_depth + 1) <= dmin[:, None])
            lc = self.anc[xs, eq.sum(axis=1) - 1]
            miss = (self.miss_up[xs] - self.miss_up[lc]) + (self.miss_down[ys] - self.miss_down[lc])
            cst = (self.cum_up[xs] - self.cum_up[lc]) + (self.cum_down[ys] - self.cum_down[lc])
            cost[same] = np.where(miss == 0, cst, _INF)
            lca[same] = lc
        cross = ~same
        if cross.any():  # up to the root, a core route, down from the root
            d, sg = self._core_lookup(self.core_index[rx[cross]], self.core_index[ry[cross]])
            ok = (d < _INF) & (self.miss_up[x[cross]] == 0) & (self.miss_down[y[cross]] == 0)
            cost[cross] = np.where(ok, self.cum_up[x[cross]] + d + self.cum_down[y[cross]], _INF)
            sigma[cross] = sg
        cost = np.where(cost < _INF, self.att_out_cost[oi] + cost + self.att_in_cost[ii], _INF)
        keys = s * self.topo.num_gpus + t
        d_pair = np.zeros(0, dtype=np.int64)
        d_link = np.zeros(0, dtype=np.int64)
        if len(self.direct_keys):
            pos = np.minimum(np.searchsorted(self.direct_keys, keys), len(self.direct_keys) - 1)
            d_pair = np.nonzero(self.direct_keys[pos] == keys)[0]
            d_link = self.direct_link[pos[d_pair]]
        return dict(pair=pair, oi=oi, ii=ii, x=x, y=y, same=same, lca=lca, cost=cost, sigma=sigma,
                    d_pair=d_pair, d_link=d_link, d_cost=self.topo.link_cost[d_link])

    def _emit(self, c: dict, kp: np.ndarray, dp: np.ndarray, dl: np.ndarray, sig_tot: np.ndarray):
        """Write the kept combinations' links (first hop, up, core, down, last hop) and the kept direct
        links into CSR rows, one row per pair; combinations are in pair order already."""
        n_pairs = len(sig_tot)
        cp = c["pair"][kp]
        w = c["sigma"][kp] / sig_tot[cp]
        kx, ky, ks = c["x"][kp], c["y"][kp], c["same"][kp]
        up_len = self.depth[kx] - self.depth[np.where(ks, c["lca"][kp], self.root[kx])]
        down_len = self.depth[ky] - self.depth[np.where(ks, c["lca"][kp], self.root[ky])]
        core_rows = np.full(len(kp), -1, dtype=np.int64)
        core_len = np.zeros(len(kp), dtype=np.int64)
        if np.any(~ks):
            sel = np.nonzero(~ks)[0]
            core_rows[sel] = self._core_paths(self.core_index[self.root[kx[sel]]], self.core_index[self.root[ky[sel]]])
            core_len[sel] = self._core_routes.length[core_rows[sel]]
        blk = 2 + up_len + down_len + core_len
        per_pair = np.bincount(cp, weights=blk, minlength=n_pairs).astype(np.int64) + np.bincount(dp, minlength=n_pairs)
        ptr = indptr_from_counts(per_pair)
        links = np.empty(ptr[-1], dtype=np.int64)
        fracs = np.empty(ptr[-1], dtype=np.float64)
        within = np.cumsum(blk) - blk                   # block offsets, global over kept combinations
        first = np.minimum(np.searchsorted(cp, np.arange(n_pairs)), max(len(cp) - 1, 0))
        base = within[first] if len(cp) else np.zeros(n_pairs, dtype=np.int64)
        pos = ptr[cp] + within - base[cp]
        links[pos], fracs[pos] = self.att_out_link[c["oi"][kp]], w
        pos = pos + 1
        self._emit_tree(links, fracs, pos, kx, up_len, w, self.up_link)
        pos = pos + up_len
        if np.any(core_len):
            sel = np.nonzero(core_len)[0]
            idx = ranges(self._core_routes.start[core_rows[sel]], core_len[sel])
            dst = ranges(pos[sel], core_len[sel])
            links[dst] = self._core_routes.links[idx]
            fracs[dst] = self._core_routes.fracs[idx] * np.repeat(w[sel], core_len[sel])
        pos = pos + core_len
        self._emit_tree(links, fracs, pos, ky, down_len, w, self.down_link)
        pos = pos + down_len
        links[pos], fracs[pos] = self.att_in_link[c["ii"][kp]], w
        if len(dp):
            links[ptr[dp + 1] - 1], fracs[ptr[dp + 1] - 1] = dl, 1.0 / sig_tot[dp]
        return ptr, links, fracs

    def _emit_tree(self, links, fracs, pos, start_nodes, lengths, w, link_of) -> None:
        """Tree links from each start node towards its root, ``lengths`` steps each."""
        cur = start_nodes.copy()
        for step in range(self.max_depth):
            m = lengths > step
            if not m.any():
                break
            links[pos[m] + step] = link_of[cur[m]]
            fracs[pos[m] + step] = w[m]
            cur[m] = self.parent[cur[m]]


def router_for(topo: Topology) -> Router:
    """The shared, cached router of a topology."""
    r = topo._cache.get("router")
    if r is None:
        r = topo._cache["router"] = Router(topo)
    return r
