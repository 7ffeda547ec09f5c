"""Can a learned prerank beat popularity on KuaiRand? Recall@N of held-out clicked pool videos.

The kuairand-sim prerank setting: pool = videos with >= 5 logged rows, users = every logged user,
trained on the train days' clicks (04-25 … 05-03), scored on the validation days' clicked
(user, pool video) pairs (05-04 … 05-05; what a choice may be made on) and the test days'
(05-06 … 05-08). Variants:

* ``popularity``: log(click count + 1);
* ``two_tower``: the library default (uniform sampled negatives, item bias initialised at log
  popularity; popularity for users with < 5 training clicks);
* ``logq(w)``: a popularity-corrected two-tower — negatives drawn in proportion to the video's
  click count q_i, the training logit is u·v + b_i − log q_i (the logQ correction, so the
  embeddings learn what is *not* explained by popularity), served as u·v + b_i + w·log q_i
  (same cold-user fallback).

Recall is also given on the warm users' pairs alone (the only ones where the variants differ).

    python benchmarks/prerank_kuairand.py [--n 50] [--weights 1,1.5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from blendrank.data.kuairand import SPLITS
from blendrank.prerank import Prerank, PrerankConfig, fit_prerank, recall_at_n
from blendrank.worlds.kuairand_sim_teacher import KuaiRandTables


def fit_logq(users, items, n_users, n_items, weight, cfg: PrerankConfig) -> Prerank:
    """The popularity-corrected two-tower (see the module docstring) on positive ``users, items``."""
    q = np.bincount(items, minlength=n_items) + cfg.popularity_smoothing
    q = q / q.sum()
    log_q = torch.from_numpy(np.log(q)).float()
    gen = torch.Generator().manual_seed(cfg.seed)
    u_emb, i_emb = torch.nn.Embedding(n_users, cfg.dim), torch.nn.Embedding(n_items, cfg.dim)
    with torch.no_grad():
        u_emb.weight.normal_(0, 0.1, generator=gen)
        i_emb.weight.normal_(0, 0.1, generator=gen)
    bias = torch.nn.Parameter(torch.zeros(n_items))
    opt = torch.optim.Adam([u_emb.weight, i_emb.weight, bias], lr=cfg.lr)
    U, I = torch.from_numpy(users), torch.from_numpy(items)
    k, qt = cfg.sampled_negatives, torch.from_numpy(q).float()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(U), generator=gen)
        for s in range(0, len(U), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            neg = torch.multinomial(qt, len(b) * k, replacement=True, generator=gen)
            u, i = torch.cat([U[b], U[b].repeat(k)]), torch.cat([I[b], neg])
            y = torch.cat([torch.ones(len(b)), torch.zeros(len(neg))])
            ue, ie = u_emb(u), i_emb(i)
            logit = (ue * ie).sum(-1) + bias[i] - log_q[i]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            loss = loss + cfg.l2 * ((ue**2).sum(-1).mean() + (ie**2).sum(-1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
    warm = np.bincount(users, minlength=n_users) >= cfg.min_user_positives
    pop = np.log(np.bincount(items, minlength=n_items) + cfg.popularity_smoothing).astype(np.float32)
    return Prerank(popularity=pop, user_vec=u_emb.weight.detach().numpy(), item_vec=i_emb.weight.detach().numpy(),
                   item_bias=(bias.detach().numpy() + weight * np.log(q)).astype(np.float32), user_warm=warm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="candidates N")
    ap.add_argument("--weights", default="1,1.5", help="logq variants: weights w of log q at serving")
    args = ap.parse_args()
    torch.set_num_threads(1)
    log = KuaiRandTables().log
    uid, vid = log["user_id"].to_numpy().astype(np.int64), log["video_id"].to_numpy().astype(np.int64)
    date, click = log["date"].to_numpy(), log["is_click"].to_numpy()
    v, vc = np.unique(vid, return_counts=True)
    pool = np.sort(v[vc >= 5])
    users = np.unique(uid)

    def pairs(split: str, clicked_only: bool):
        lo, hi = SPLITS[split]
        sel = (date >= lo) & (date <= hi) & np.isin(vid, pool) & ((click > 0) | (not clicked_only))
        return np.searchsorted(users, uid[sel]), np.searchsorted(pool, vid[sel]), click[sel]

    tu, ti, tl = pairs("train", False)
    cfg = PrerankConfig()
    models = {"popularity": fit_prerank(tu, ti, tl, len(users), len(pool), PrerankConfig(model="popularity")),
              "two_tower": fit_prerank(tu, ti, tl, len(users), len(pool), cfg)}
    for w in (float(x) for x in args.weights.split(",") if x):
        models[f"logq({w:g})"] = fit_logq(tu[tl > 0], ti[tl > 0], len(users), len(pool), w, cfg)
    print(f"pool {len(pool):,} videos, {len(users):,} users, {int((tl > 0).sum()):,} training clicks; recall@{args.n}\n")
    print("| prerank | valid | valid, warm users | test | test, warm users |")
    print("|---|---:|---:|---:|---:|")
    held = {s: pairs(s, True)[:2] for s in ("valid", "test")}
    def warm(u):
        return ~models["two_tower"].is_cold(u)

    for name, m in models.items():
        cells = []
        for u, i in held.values():
            w = warm(u)
            cells += [recall_at_n(m, u, i, args.n), recall_at_n(m, u[w], i[w], args.n)]
        print(f"| {name} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    u, _ = held["test"]
    print(f"\nwarm users' share of the test pairs: {warm(u).mean():.3f}")


if __name__ == "__main__":
    main()
