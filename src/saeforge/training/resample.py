"""Dead-feature resampling: give features that stopped firing (or duplicate another) a new direction.

A feature is dead after `dead_window` tokens without firing (the trainer's on-device counter)
if it also fires on none of `resample_sample` fresh inputs scored at the resampling step; with
`--resample-duplicates COS` the rarer of two features whose decoder rows have cosine >= COS is
renewed too. New directions: `anthropic` (Towards Monosemanticity: inputs drawn ∝ squared
error), `clustered` (the first seed: the worst-reconstructed inputs clustered with
MiniBatchKMeans; `centroid` = a member minus its cluster centroid, `residual` = the summed
residual of one of the most coherent clusters of what no firing feature explains). New
encoders: `anthropic` (0.2 × the alive features' mean norm, bias 0) or `alive` (their median
norm and bias). The trainer renews the features (`Trainer.renew_features`: weights, Adam
moments, firing counters). Rank 0 decides from the run's seed and step and broadcasts.
Where to look (`--resample-pool`): `fresh` draws and scores `resample_sample` new inputs at each
event; `stream` keeps the worst-reconstructed inputs of every training batch since the last
event (their errors come free with the step) and those of earlier events still unexplained, so
an event draws nothing and scores only those candidates.
docs/design.md ("Resampling") gives the reasons, docs/resampling.md the measurements.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saeforge import distributed
from saeforge.errors import UserError
from saeforge.evaluation.metrics import squared_error
from saeforge.options import AUTO, Config, opt

Trainer = Any  # the trainer.Trainer that calls the resampler (it sits a layer above, so not imported)

METHODS = ("none", "anthropic", "clustered")
SAME_DIRECTION = 0.5  # residual directions: clusters this close share a missing feature (true ones: ~0.1)
CLUSTERS_PER_FEATURE = 4  # residual directions: clusters per renewed feature (small, pure clusters)
ENCODER_SCALE = 0.2  # Towards Monosemanticity's factor on the alive features' mean encoder norm
POOL_CHUNK = 131072  # resampling inputs scored at a time (a pool of one chunk is scored as it always was)


@dataclass(frozen=True)
class ResampleConfig(Config):
    """Resampling's settings (every training command has them)."""

    resample: str = opt("none", f"dead-feature resampling, one of {', '.join(METHODS)} (auto: clustered when a "
                        "resampling step fits in the budget and AuxK is off, else none)", choices=(*METHODS, AUTO))
    resample_every: int = opt(500, "resample dead features every N steps (none in the budget's last N steps)", ge=0)
    resample_at: str = opt("", "resample at these steps instead, e.g. 1000,2000,4000")
    resample_sample: int | None = opt(16384, "inputs scored by reconstruction error at each resampling, streamed in "
                                      "chunks (auto: max(131072, 2 × latents²))", ge=1)
    resample_pool: str = opt("fresh", "where resampling looks for badly reconstructed inputs: fresh "
                             "(--resample-sample new inputs drawn and scored at each resampling) or stream (the "
                             "worst of every training batch since the last resampling, and the earlier candidates "
                             "still unexplained: nothing drawn, only those scored)", choices=("fresh", "stream"))
    resample_worst: int = opt(2048, "clustered: the worst-reconstructed inputs kept and clustered (residual: "
                              "the N with the most unexplained error among the 8N worst)", ge=1)
    resample_clusters: int = opt(32, "clustered: MiniBatchKMeans clusters over the worst inputs", ge=1)
    resample_direction: str = opt("centroid", "clustered: new direction = centroid (x − its cluster centroid) or "
                                  "residual (the summed residual x − x̂ of one of the most coherent clusters of residual "
                                  "directions, over the worst inputs with the most error no firing feature explains)",
                                  choices=("residual", "centroid"))
    resample_encoder: str = opt("anthropic", "new encoder columns: anthropic (0.2 × the alive features' mean norm, "
                                "bias 0) or alive (the alive features' median norm and median bias)",
                                choices=("anthropic", "alive"))
    resample_duplicates: float = opt(0.0, "also renew the rarer of two features whose decoder rows have cosine >= "
                                     "this (0: off)", ge=0, le=1)

    def validate(self) -> None:
        super().validate()
        if self.resample_at:
            parse_steps(self.resample_at)

    def schedule(self, total_steps: int, quiet_tail: int) -> list[int]:
        """The steps resampling acts on: --resample-at, or every --resample-every steps but never in
        the budget's last `quiet_tail` steps (at least one interval: a renewed feature needs time)."""
        if self.resample_at:
            return sorted(s for s in parse_steps(self.resample_at) if 0 < s < total_steps)
        every = self.resample_every
        end = total_steps - max(every, quiet_tail)
        return list(range(every, end + 1, every)) if every > 0 else []


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--resample-at must be comma-separated step numbers, got {text!r}") from None
    if any(s < 1 for s in steps):
        raise UserError(f"--resample-at steps must be >= 1, got {text!r}")
    return steps


def check_settings(cfg: Any) -> None:
    """Refuse settings that cannot do what was asked, before any training happens (`cfg`: the
    resolved run config)."""
    if cfg.resample == "none":
        return
    if cfg.resample_every < 1 and not cfg.resample_at:
        raise UserError(f"--resample {cfg.resample} needs --resample-every >= 1 (got {cfg.resample_every}) "
                        "or --resample-at STEP,STEP")
    total_tokens = cfg.steps * cfg.batch_size
    if cfg.dead_window >= total_tokens:
        raise UserError(f"the dead window ({cfg.dead_window} tokens) is not shorter than training ({total_tokens} "
                        "tokens): no feature could ever count as dead; lower --dead-window or train longer")
    if not cfg.resample_steps():
        raise UserError(f"--resample {cfg.resample}: no resampling step falls inside the {cfg.steps} training "
                        "steps (resampling stops one interval before the end, or where the lr decay starts); "
                        "lower --resample-every")


class Resampler:
    """Called by the trainer after each step; acts on the scheduled steps only.

    `sample(n, step, part)` returns n activations [n, d_in] from the training distribution (the
    toy generator, or the live buffer) without advancing the training stream; a pool larger
    than POOL_CHUNK is drawn in parts 0, 1, … that must differ."""

    def __init__(self, cfg: Any, sample: Callable[[int, int, int], torch.Tensor]):
        """`cfg`: the resolved run config (its budget, batch, dead window, seed and resampling settings)."""
        self.cfg, self.sample = cfg, sample
        self.steps = sorted(set(cfg.resample_steps())) if cfg.resample != "none" else []
        self.stream = cfg.resample_pool == "stream"
        self.scored = 0  # stream: rows scored at the last event
        self.rows: list[torch.Tensor] = []  # stream: the worst inputs of each batch since the last event
        self.carry: torch.Tensor | None = None  # stream: the candidates kept at the last event
        self.fired_F: torch.Tensor | None = None  # stream: batches each feature fired in since the last event

    def candidates(self) -> int:
        """Inputs that choosing directions reads: 8 × --resample-worst for residual directions (and
        for anthropic's draw ∝ error² from a stream), --resample-worst for centroids."""
        return self.cfg.resample_worst * (1 if self.cfg.resample_direction == "centroid" and
                                          self.cfg.resample == "clustered" else 8)

    def interval(self, step: int) -> tuple[int, int | None]:
        """(the last event before `step`, or 0; the first event at or after it, or None)."""
        i = bisect.bisect_left(self.steps, step)
        return (self.steps[i - 1] if i else 0), (self.steps[i] if i < len(self.steps) else None)

    def observe(self, tr: Trainer, x_BD: torch.Tensor, out: Any) -> None:
        """Stream pool: after each step, keep the batch's worst-reconstructed inputs (twice the
        candidates over an interval) and count the batches each feature fired in. No host sync.
        Only steps before a scheduled event keep rows, so a run resumed with a larger budget
        lacks those of the steps between its first budget's last event and its end."""
        if not self.stream:
            return
        prev, nxt = self.interval(tr.step)
        if nxt is None:
            return
        q = min(len(x_BD) * tr.data_world, -(-2 * self.candidates() // (nxt - prev)))
        l_B = squared_error(out.err_BD.float())
        top = torch.topk(l_B, min(q, len(l_B))).indices
        if tr.data_world > 1:  # the global batch's worst: each rank's worst q, gathered, then the worst q of those
            xl_ND1 = distributed.all_gather_rows(torch.cat([x_BD[top].float(), l_B[top, None]], 1))
            top = torch.topk(xl_ND1[:, -1], q).indices
            self.rows.append(xl_ND1[top, :-1])
        else:
            self.rows.append(x_BD[top].float())
        if self.fired_F is None:
            self.fired_F = torch.zeros(len(out.feature_sums_F), dtype=torch.long, device=x_BD.device)
        self.fired_F += out.feature_sums_F > 0

    def __call__(self, tr: Trainer) -> dict[str, Any] | None:
        if tr.step not in self.steps:
            return None
        t0 = time.perf_counter()
        cfg, sae = self.cfg, tr.sae
        dev = sae.W_dec.device
        window_dead_F = tr.state.tokens_since_fired_F >= tr.dead_window
        event = {"step": tr.step, "method": cfg.resample, "dead": 0, "duplicates": 0}
        # one host sync, on resampling steps only; the same on every rank (the counters are)
        act = bool(window_dead_F.any()) or cfg.resample_duplicates > 0
        if distributed.is_main() and (act or self.stream):  # a stream is rolled on even with nothing to renew
            X_ND, loss_N, fires_F = self.streamed(sae) if self.stream else self.pool(sae, tr.step)
            event["pool"] = self.scored if self.stream else self.pool_size(sae)
        if act:
            # Rank 0 scores its pool, decides which features to renew and their directions,
            # and broadcasts both, so every rank applies the same change.
            mask_F = torch.zeros(sae.d_sae, device=dev)  # 1: dead, 2: duplicate
            dirs_KD = None
            if distributed.is_main():
                # firing on the pool: not dead after all (stream: silent for as long as a fresh pool is big)
                silent_F = (tr.state.tokens_since_fired_F >= self.silence(tr, sae)) if self.stream else fires_F == 0
                dead_F = window_dead_F & silent_F
                dup_F = (duplicates(sae, fires_F, ~dead_F, cfg.resample_duplicates)
                         if cfg.resample_duplicates > 0 else torch.zeros_like(dead_F))
                mask_F[dead_F] = 1.0
                mask_F[dup_F] = 2.0
                k = int((dead_F | dup_F).sum())
                if k:
                    dirs_KD = self.directions(tr, X_ND, loss_N, k).to(dev, torch.float32).contiguous()
            distributed.broadcast_(mask_F)
            idx = torch.nonzero(mask_F).flatten()  # ascending, as on rank 0
            event["dead"], event["duplicates"] = int((mask_F == 1).sum()), int((mask_F == 2).sum())
            if len(idx):
                if dirs_KD is None:
                    dirs_KD = torch.empty(len(idx), row_width(sae), device=dev)
                distributed.broadcast_(dirs_KD)
                tr.renew_features(idx, new_parameters(sae, idx, dirs_KD, cfg.resample_encoder))
        if self.stream:  # the next interval starts empty; what is still unexplained stays a candidate
            self.rows, self.fired_F = [], None
        event["resampled"] = event["dead"] + event["duplicates"]
        event["seconds"] = round(time.perf_counter() - t0, 4)
        return event

    def pool_size(self, sae) -> int:
        """--resample-sample (resolved by the run config: TrainConfig.resolved)."""
        return self.cfg.resample_sample

    @torch.no_grad()
    def pool(self, sae, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score the pool chunk by chunk and keep only what choosing directions reads: the
        candidates with the largest errors (8 × --resample-worst for residual directions, the
        --resample-worst for centroids, all for anthropic's draw ∝ error²), in pool order; and
        the firing counts of every feature over the whole pool. Memory stays one chunk."""
        cfg, dev = self.cfg, sae.W_dec.device
        n = self.pool_size(sae)
        keep = n if cfg.resample == "anthropic" else self.candidates()
        X_ND = loss_N = fires_F = None
        for part, start in enumerate(range(0, n, POOL_CHUNK)):
            x_ND = self.sample(min(POOL_CHUNK, n - start), step, part).to(dev, torch.float32)
            l_N, f_F = score(sae, x_ND)
            fires_F = f_F if fires_F is None else fires_F + f_F
            X_ND, loss_N = (x_ND, l_N) if X_ND is None else (torch.cat([X_ND, x_ND]), torch.cat([loss_N, l_N]))
            X_ND, loss_N = worst(X_ND, loss_N, keep)
        return X_ND, loss_N, fires_F

    @torch.no_grad()
    def streamed(self, sae) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stream pool at an event: the kept inputs of this interval and the last event's
        candidates, scored by the dictionary as it is now; the candidates with the largest errors
        (in pool order) are kept, and carried to the next event. Firing counts (which of two
        duplicates is rarer): the interval's batches each feature fired in."""
        parts = ([self.carry] if self.carry is not None else []) + self.rows
        dev = sae.W_dec.device
        X_ND = torch.cat(parts) if parts else torch.empty(0, row_width(sae), device=dev)
        self.scored = len(X_ND)
        X_ND, loss_N = worst(X_ND, score(sae, X_ND)[0], self.candidates())
        self.carry = X_ND
        fires_F = self.fired_F if self.fired_F is not None else torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
        return X_ND, loss_N, fires_F

    def silence(self, tr: Trainer, sae) -> int:
        """Stream pool: a feature is dead if it fired on none of the last min(pool size, inputs
        since the last event) training inputs — the rate a fresh pool of that size could see."""
        prev = self.interval(tr.step)[0]
        return min(self.pool_size(sae), (tr.step - prev) * self.cfg.batch_size)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the stream pool (nothing for a fresh pool)."""
        if not self.stream:
            return {}
        out = {"rows": torch.cat(self.rows) if self.rows else None, "carry": self.carry, "fired": self.fired_F}
        return {k: v for k, v in out.items() if v is not None}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], sae, where: str) -> None:
        """Take back what `state_tensors` saved (a resumed run's stream pool), checked."""
        if not self.stream:
            return
        d_in, d_sae, dev = row_width(sae), sae.d_sae, sae.W_dec.device
        for key, want in (("rows", None), ("carry", None), ("fired", (d_sae,))):
            t = tensors.get(key)
            if t is None or (key == "rows" and t.numel() == 0):
                continue
            ok = t.shape == want if want else (t.dim() == 2 and t.shape[1] == d_in and t.is_floating_point())
            if not ok or (key == "fired" and t.dtype != torch.long):
                raise UserError(f"checkpoint {where}: resample.{key} is misshapen; delete it to start over")
        t = {k: v.to(dev) for k, v in tensors.items() if k in ("rows", "carry", "fired") and v.numel()}
        self.rows = [t["rows"]] if "rows" in t else []
        self.carry, self.fired_F = t.get("carry"), t.get("fired")

    def directions(self, tr: Trainer, X_ND: torch.Tensor, loss_N: torch.Tensor, k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + tr.step)
        if self.cfg.resample == "anthropic":
            return anthropic_directions(tr.sae, X_ND, k, g, loss_N=loss_N)
        return clustered_directions(tr.sae, X_ND, k, g, worst=self.cfg.resample_worst,
                                    clusters=self.cfg.resample_clusters, direction=self.cfg.resample_direction,
                                    seed=self.cfg.seed * 1_000_003 + tr.step, loss_N=loss_N)


def row_width(sae) -> int:
    """The width of a pool row: an SAE's input, or a transcoder's input and target side by side."""
    return sae.d_in + (sae.d_out if sae.transcoder else 0)


def worst(X_ND: torch.Tensor, loss_N: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` inputs with the largest losses, in their original order (as an unchunked pool)."""
    if len(loss_N) <= keep:
        return X_ND, loss_N
    top = torch.topk(loss_N, keep).indices.sort().values
    return X_ND[top], loss_N[top]


@torch.no_grad()
def score(sae, X_ND: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared reconstruction error per input [N], number of inputs each feature fires on [F]); a
    transcoder's rows are (input, target) pairs, its error the target's."""
    errs, fires_F = [], torch.zeros(sae.d_sae, dtype=torch.long, device=X_ND.device)
    for i in range(0, len(X_ND), chunk):
        x_BD, y_BE = sae.split(X_ND[i:i + chunk])
        f_BF = sae.encode(x_BD)
        errs.append(squared_error(sae.decode(f_BF, x_BD) - sae.target(x_BD, y_BE)))
        fires_F += (f_BF > 0).sum(0)
    return torch.cat(errs), fires_F


@torch.no_grad()
def duplicates(sae, fires_F: torch.Tensor, alive_F: torch.Tensor, threshold: float, chunk: int = 4096) -> torch.Tensor:
    """Alive features whose decoder row has cosine >= threshold with another alive feature that
    fires more often on the scored inputs (ties: the lower index is kept). Such pairs share one
    direction between two features, so one of them is free to learn something else."""
    W_FD = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F = W_FD.shape[0]
    order_F = torch.sort(-fires_F, stable=True).indices  # most frequent first, ties by index
    rank_F = torch.empty_like(order_F)
    rank_F[order_F] = torch.arange(F, device=W_FD.device)  # 0 = kept first
    dup_F = torch.zeros(F, dtype=torch.bool, device=W_FD.device)
    for i in range(0, F, chunk):
        cos_CF = W_FD[i:i + chunk] @ W_FD.T
        close_CF = (cos_CF >= threshold) & alive_F & (rank_F < rank_F[i:i + chunk, None])
        dup_F[i:i + chunk] = close_CF.any(1) & alive_F[i:i + chunk]
    return dup_F


@torch.no_grad()
def anthropic_directions(sae, X_ND: torch.Tensor, k: int, g: torch.Generator,
                         loss_N: torch.Tensor | None = None) -> torch.Tensor:
    loss_N = (score(sae, X_ND)[0] if loss_N is None else loss_N).cpu().double()
    p = loss_N.pow(2)
    if not torch.isfinite(p).all() or p.sum() <= 0:
        p = torch.ones_like(p)
    pick = torch.multinomial(p / p.sum(), k, replacement=len(p) < k, generator=g)
    x_KD, y_KE = sae.split(X_ND[pick.to(X_ND.device)])
    return x_KD if y_KE is None else torch.cat([y_KE, x_KD], 1)  # a transcoder writes the target, reads the input


@torch.no_grad()
def unexplained(sae, X_ND: torch.Tensor, active: int = 64, chunk: int = 2048, ridge: float = 1e-4) -> torch.Tensor:
    """x − b_dec minus its least-squares fit on the decoder rows of the features firing on x
    (at most `active` of them, the largest): what no firing feature can explain, whatever its
    code. The plain residual x − x̂ also holds the L1 penalty's shrinkage of well-learned
    features, which on toy data outweighs a missing rare feature on most inputs. (A transcoder:
    its target minus b_dec and the skip connection's part, fit the same way.)"""
    out = []
    for i in range(0, len(X_ND), chunk):
        x_BD, t_BE = sae.split(X_ND[i:i + chunk])
        f_BF = sae.encode(x_BD)
        v_BA, i_BA = f_BF.topk(min(active, f_BF.shape[1]), dim=1)
        Wa_BAD = sae.W_dec[i_BA] * (v_BA > 0)[..., None]  # rows of silent features zeroed
        y_BD = sae.target(x_BD, t_BE) - sae.b_dec
        if sae.W_skip is not None:
            y_BD = y_BD - x_BD @ sae.W_skip
        G_BAA = Wa_BAD @ Wa_BAD.transpose(1, 2) + ridge * torch.eye(Wa_BAD.shape[1], device=X_ND.device)
        coef_BA1 = torch.linalg.solve(G_BAA, Wa_BAD @ y_BD[..., None])
        out.append(y_BD - (Wa_BAD.transpose(1, 2) @ coef_BA1)[..., 0])
    return torch.cat(out)


@torch.no_grad()
def clustered_directions(sae, X_ND: torch.Tensor, k: int, g: torch.Generator, *, worst: int, clusters: int,
                         direction: str, seed: int, loss_N: torch.Tensor | None = None) -> torch.Tensor:
    from sklearn.cluster import MiniBatchKMeans

    loss_N = score(sae, X_ND)[0] if loss_N is None else loss_N
    n_worst = max(min(worst, len(X_ND)), 1)
    if direction == "residual":
        return residual_directions(sae, X_ND, loss_N, k, n_worst, clusters, seed)
    top = torch.topk(loss_N, n_worst).indices.sort().values  # input order: not the fp order of near-tied errors
    x_ND, y_NE = sae.split(X_ND[top])
    Xw_ND = sae.target(x_ND, y_NE)  # a transcoder clusters its targets
    C = max(1, min(clusters, n_worst))
    km = MiniBatchKMeans(n_clusters=C, random_state=seed % 2**31, n_init=1, batch_size=min(1024, n_worst))
    labels = km.fit_predict(Xw_ND.cpu().numpy())
    lw = loss_N[top].cpu().numpy()
    mean_loss = np.array([lw[labels == c].mean() if (labels == c).any() else -np.inf for c in range(C)])
    ranked = [c for c in np.argsort(-mean_loss) if np.isfinite(mean_loss[c])][: min(k, C)]
    rs = np.random.default_rng(seed % 2**63)
    pools = {c: list(rs.permutation(np.flatnonzero(labels == c))) for c in ranked}
    rows = []
    for j in range(k):
        c = ranked[j % len(ranked)]
        i = pools[c].pop() if pools[c] else int(rs.choice(np.flatnonzero(labels == c)))
        row = Xw_ND[i] - torch.from_numpy(km.cluster_centers_[c]).to(Xw_ND)
        rows.append(torch.cat([row, x_ND[i]]) if sae.transcoder else row)  # a transcoder reads that input
    return torch.stack(rows)


@torch.no_grad()
def residual_directions(sae, X_ND: torch.Tensor, loss_N: torch.Tensor, k: int, n_worst: int, clusters: int,
                        seed: int) -> torch.Tensor:
    """Directions the dictionary lacks, each estimated from the inputs that lack it.

    1. Candidates: the 8 × n_worst worst-reconstructed inputs; keep the n_worst whose
       `unexplained` part is largest (on a toy dictionary at MMCS 0.95, 43% of the 512 kept
       hold a feature with no atom, against 8% of the 2,048 worst by plain error).
    2. Cluster their residuals x − x̂ by direction into max(clusters, 4k) clusters.
    3. Rank the clusters (2 or more members) by coherence, the length of the mean of their unit
       residuals: inputs that miss the same feature agree, mixed misses cancel.
    4. Each renewed feature gets the summed residual of one of the most coherent clusters,
       skipping a cluster whose direction has cosine >= SAME_DIRECTION with one already taken."""
    from sklearn.cluster import MiniBatchKMeans

    n_cand = min(8 * n_worst, len(X_ND))
    cand = torch.topk(loss_N, n_cand).indices.sort().values  # input order: not the fp order of near-tied errors
    u_N = unexplained(sae, X_ND[cand]).pow(2).sum(-1)
    keep = cand[torch.topk(u_N, n_worst).indices.sort().values]
    x_ND, y_NE = sae.split(X_ND[keep])
    R_ND = sae.target(x_ND, y_NE) - sae(x_ND)
    U_ND = R_ND / R_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
    C = max(1, min(max(clusters, CLUSTERS_PER_FEATURE * k), n_worst))
    km = MiniBatchKMeans(n_clusters=C, random_state=seed % 2**31, n_init=1, batch_size=min(1024, n_worst))
    labels_N = torch.from_numpy(km.fit_predict(U_ND.cpu().numpy()).astype(np.int64)).to(R_ND.device)
    count_C = torch.bincount(labels_N, minlength=C)
    sumU_CD = torch.zeros(C, R_ND.shape[1], device=R_ND.device).index_add_(0, labels_N, U_ND)
    sumR_CD = torch.zeros(C, R_ND.shape[1], device=R_ND.device).index_add_(0, labels_N, R_ND)
    coherence_C = sumU_CD.norm(dim=1) / count_C.clamp_min(1)
    coherence_C[count_C < 2] = -1.0  # a single input always agrees with itself: last resort
    order = torch.sort(-coherence_C, stable=True).indices
    order = order[count_C[order] > 0]
    dirs_CD = sumR_CD / sumR_CD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    picked: list[int] = []  # greedy: a frequent missing feature splits into several clusters; take it once
    for c in order.tolist():
        if len(picked) == k:
            break
        if not picked or float((dirs_CD[picked] @ dirs_CD[c]).max()) < SAME_DIRECTION:
            picked.append(c)
    picked += [c for c in order.tolist() if c not in picked][: k - len(picked)]  # fewer distinct than k
    chosen = torch.tensor(picked, device=R_ND.device)[torch.arange(k, device=R_ND.device) % len(picked)]
    if not sae.transcoder:
        return sumR_CD[chosen]
    # a transcoder's new latent reads the inputs whose targets miss that direction: their sum
    sumX_CD = torch.zeros(C, x_ND.shape[1], device=R_ND.device).index_add_(0, labels_N, x_ND)
    return torch.cat([sumR_CD[chosen], sumX_CD[chosen]], 1)


@torch.no_grad()
def new_parameters(sae, idx_K: torch.Tensor, dirs_KD: torch.Tensor, encoder: str = "anthropic") -> dict[str, torch.Tensor]:
    """Decoder rows (the unit directions), encoder columns and biases for renewed features idx_K.
    A transcoder's directions are [decoder direction | encoder direction] rows (its pool rows are
    input-target pairs, so anthropic's draw writes the target and reads the input)."""
    enc_KD = None
    if sae.transcoder:
        dirs_KD, enc_KD = dirs_KD[:, :sae.d_out], dirs_KD[:, sae.d_out:]
        enc_KD = enc_KD / enc_KD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dirs_KD = dirs_KD / dirs_KD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive_F = torch.ones(sae.d_sae, dtype=torch.bool, device=idx_K.device)
    alive_F[idx_K] = False
    enc_norms_F = sae.W_enc.norm(dim=0)
    bias = torch.tensor(0.0, device=idx_K.device)
    if not alive_F.any():
        scale = torch.tensor(1.0, device=enc_norms_F.device)
    elif encoder == "alive":
        scale, bias = enc_norms_F[alive_F].median(), sae.b_enc[alive_F].median()
    else:
        scale = ENCODER_SCALE * enc_norms_F[alive_F].mean()
    return {"W_dec": dirs_KD, "W_enc": (dirs_KD if enc_KD is None else enc_KD).T * scale, "b_enc": bias.expand(len(idx_K))}
