"""Everything rank-related: calibration across processes, and the runtime under context parallelism.

Two ways asymrnr runs on several processes (docs/distributed.md has the why and the numbers):

* **Calibration, data-parallel over prompts** (``torchrun --nproc-per-node N asymrnr-calibrate ...``): every
  rank loads the whole pipeline on its own device (``cuda:LOCAL_RANK``, or the CPU) and profiles its share of
  the prompts (prompt ``i`` on rank ``i % N``), one round of N prompts at a time. After each round the runs
  (about 200 KiB each) travel to rank 0 as Python objects over a gloo process group, whatever the device:
  rank 0 alone writes, in prompt order. :class:`RankContext` says who we are, :func:`rank_device` where we
  compute, :func:`gather_rounds` runs the rounds.
* **Generation under diffusers' context parallelism** (``transformer.enable_parallelism(config=
  ContextParallelConfig(ulysses_degree=N | ring_degree=N))``): each rank holds a contiguous shard of the video
  tokens. The runtime reduces Q and K/V of its shard by the *global* seeded partition restricted to the shard
  (:func:`restrict`), matching sources only to destinations of the same shard, and every rank drops the same
  number of tokens (:func:`local_count`), so that the all-to-all (Ulysses) and all-gather (ring) collectives
  see equal shapes. :func:`shard_of` reads the shard from the transformer's parallel config.
  :func:`simulate_context_parallel` reproduces that reduction in one process (every shard at once), to
  measure what sharding costs in quality on a single device.

Nothing here initialises CUDA or a process group at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from .errors import AsymRnRError
from .matching import Matching, Partition, Reduction, compute_matching, matching_features

logger = logging.getLogger(__name__)

#: How long a rank waits for the others at the end of a round (one prompt each), unless
#: ``ASYMRNR_DIST_TIMEOUT_S`` says otherwise: long enough for one 720p generation of a 14B model.
DEFAULT_TIMEOUT_S = 3 * 3600


# =============================================================================================== ranks


@dataclass(frozen=True)
class RankContext:
    """Who this process is among the processes of one job (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def prompts(self, todo: Sequence[int]) -> list[int]:
        """This rank's share of ``todo``: entries ``rank, rank + world, ...`` (round ``k`` holds entries
        ``k * world .. k * world + world - 1``, so the rounds follow ``todo``'s order)."""
        return list(todo[self.rank::self.world])


def env_context() -> RankContext:
    """The rank, world size and local rank torchrun (or any launcher setting ``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``) gave this process; a single process without them."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise AsymRnRError(
                f"the environment variable {name}={value!r} is not an integer; launch with torchrun") from None

    world = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise AsymRnRError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a process of a "
                           "job; launch with torchrun --nproc-per-node N")
    return RankContext(rank, world, local)


@contextlib.contextmanager
def process_group(ctx: RankContext | None = None) -> Iterator[RankContext]:
    """Join the job's process group for the ``with`` block (a no-op for a single process).

    The group uses gloo, whatever the device: it carries only small Python objects (runs, status), and gloo
    needs no GPU binding. An existing default group (a user's script) is used as it is and left alone."""
    import torch.distributed as dist

    ctx = ctx or env_context()
    if not ctx.distributed:
        yield ctx
        return
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != ctx.world or dist.get_rank() != ctx.rank:
            raise AsymRnRError(f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                               f"differs from RANK={ctx.rank}, WORLD_SIZE={ctx.world}")
        yield ctx
        return
    if not dist.is_available():
        raise AsymRnRError("this torch build has no torch.distributed; run a single process (without torchrun)")
    seconds = float(os.environ.get("ASYMRNR_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world,
                            timeout=datetime.timedelta(seconds=seconds))
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def rank_device(device: str | None, ctx: RankContext) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``cuda`` (or no ``--device`` on a CUDA machine), the
    CPU for ``cpu``. A numbered device (``cuda:1``) is refused with several ranks: they would all share it."""
    if not ctx.distributed:
        return device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.index is not None:
        raise AsymRnRError(
            f"--device {device} names one device, but {ctx.world} ranks would all use it; pass --device "
            f"{dev.type} (rank r then uses {dev.type}:LOCAL_RANK) or leave --device out"
        )
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if ctx.local_rank >= count:
            raise AsymRnRError(
                f"rank {ctx.rank} has LOCAL_RANK {ctx.local_rank}, but this node has {count} CUDA device(s); "
                f"launch at most {count} processes per node (torchrun --nproc-per-node {count})"
            )
    return f"{dev.type}:{ctx.local_rank}"


def all_gather_object(obj: Any, ctx: RankContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (just ``[obj]`` for a single process)."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (torchrun stops every rank this way when one of them failed)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) instead of killing the
    process at once, so that rank 0 can still say which prompts are missing. Main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RankFailed(AsymRnRError):
    """A rank of a sharded calibration failed or was interrupted; the rounds stopped on every rank.

    Attributes:
        done: indices (into the job's prompts) whose runs reached rank 0.
        missing: indices that were not profiled (or whose run was lost).
        failures: ``{rank: message}`` of the ranks that failed.
    """

    def __init__(self, message: str, done: list[int], missing: list[int], failures: dict[int, str]):
        super().__init__(message)
        self.done, self.missing, self.failures = done, missing, failures


def gather_rounds(ctx: RankContext, todo: Sequence[int], work: Callable[[int], Any],
                  receive: Callable[[int, Any], None], *, on_round: Callable[[int], None] | None = None) -> list[int]:
    """Run ``work(i)`` for this rank's share of ``todo``, one round of ``world`` prompts at a time; after each
    round every result reaches rank 0, which calls ``receive(i, result)`` in ``todo`` order.

    A rank whose ``work`` raises (an error, or Ctrl-C) tells the others at the end of the round; then every
    rank stops: rank 0 has received every result of the rounds so far, and of this round those that
    succeeded. Raises :class:`RankFailed` on every rank (on the failing rank, chained to its own error), or
    re-raises the rank's own ``KeyboardInterrupt`` after telling the others. A lost peer (a rank killed,
    its process group broken) raises :class:`RankFailed` too.

    Returns the indices whose results reached rank 0 (all of ``todo`` when nothing failed).
    """
    mine = ctx.prompts(todo)
    rounds = -(-len(todo) // ctx.world) if todo else 0
    done: list[int] = []
    for k in range(rounds):
        index = mine[k] if k < len(mine) else None
        own_error: BaseException | None = None
        if index is None:
            payload = ("idle", None, None)
        else:
            try:
                payload = ("ok", index, work(index))
            except BaseException as err:  # noqa: BLE001 - every failure must reach the other ranks
                own_error = err
                payload = ("failed", index, f"{type(err).__name__}: {err}".strip())
        try:
            gathered = all_gather_object(payload, ctx)
        except Exception as err:  # a peer died: the collective breaks
            if own_error is not None:
                raise own_error
            gone = sorted(set(todo) - set(done))
            raise RankFailed(f"lost contact with the other ranks ({type(err).__name__}: {err})", done, gone,
                             {}) from err
        failures = {}
        for rank, (status, i, value) in enumerate(gathered):
            if status == "ok":
                if ctx.is_main:
                    receive(i, value)
                done.append(i)
            elif status == "failed":
                failures[rank] = f"prompt {i}: {value}"
        if on_round is not None:
            on_round(k)
        if failures:
            missing = [i for i in todo if i not in set(done)]
            what = "; ".join(f"rank {r} failed on {msg}" for r, msg in sorted(failures.items()))
            error = RankFailed(what, done, missing, failures)
            if own_error is not None and isinstance(own_error, KeyboardInterrupt):
                raise own_error
            raise error from own_error
    return done


# ================================================================================ context parallelism


@dataclass(frozen=True)
class Shard:
    """The video tokens of one rank under context parallelism: ``[start, start + length)`` of ``N``.

    Attributes:
        rank: this rank's position along the sequence (its rank in diffusers' flattened CP mesh).
        world: ranks sharing the sequence.
        bounds: ``(start, length)`` of every rank's shard, in rank order.
        simulated: all shards live in this one process (:func:`simulate_context_parallel`).
        group: the process group of the CP mesh (collectives of the cross-shard matching).
    """

    rank: int
    world: int
    bounds: tuple[tuple[int, int], ...]
    simulated: bool = False
    group: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def start(self) -> int:
        return self.bounds[self.rank][0]

    @property
    def length(self) -> int:
        return self.bounds[self.rank][1]


def shard_bounds(num_tokens: int, world: int, *, uneven: bool = False) -> tuple[tuple[int, int], ...]:
    """``(start, length)`` per rank as diffusers shards ``num_tokens``: ``chunk`` into equal parts (the
    default, which needs ``num_tokens % world == 0``), or ``tensor_split`` (``ulysses_anything`` /
    ``ring_anything``: the first ``num_tokens % world`` ranks hold one more)."""
    if uneven:
        base, extra = divmod(num_tokens, world)
        lengths = [base + (1 if r < extra else 0) for r in range(world)]
    else:
        if num_tokens % world:
            raise AsymRnRError(
                f"context parallelism over {world} ranks splits the {num_tokens} video tokens into equal shards, "
                f"but {num_tokens} is not a multiple of {world}; choose a size whose token count divides (or "
                "ContextParallelConfig(ulysses_anything=True))"
            )
        lengths = [num_tokens // world] * world
    starts = [sum(lengths[:r]) for r in range(world)]
    return tuple(zip(starts, lengths))


def context_parallel_config(module: Any) -> Any:
    """The ``ContextParallelConfig`` of a transformer that ``enable_parallelism`` set up, else ``None``."""
    config = getattr(module, "_parallel_config", None)
    return getattr(config, "context_parallel_config", None) if config is not None else None


def shard_of(module: Any, num_tokens: int) -> Shard | None:
    """This rank's shard of ``num_tokens`` video tokens when ``module`` runs under context parallelism."""
    cp = context_parallel_config(module)
    if cp is None:
        return None
    import torch.distributed as dist

    mesh = cp._flattened_mesh
    group = mesh.get_group()
    world = int(mesh.size())
    uneven = bool(getattr(cp, "ulysses_anything", False) or getattr(cp, "ring_anything", False))
    return Shard(int(dist.get_rank(group)), world, shard_bounds(num_tokens, world, uneven=uneven), group=group)


def check_context_parallel(adapter: Any, module: Any, component: str, *, observing: bool = False) -> None:
    """Refuse a parallelised transformer that asymrnr cannot run right (rather than a silently wrong result)."""
    if context_parallel_config(module) is None:
        return
    if not getattr(adapter, "context_parallel", False):
        raise AsymRnRError(
            f"{component} ({type(module).__name__}) runs under context parallelism, which asymrnr supports only "
            f"for families whose diffusers transformer has a context-parallel plan (Wan, LTX-Video); the "
            f"{adapter.family} attention would see only its own rank's tokens. Run it without "
            "enable_parallelism, or without asymrnr"
        )
    if observing:
        raise AsymRnRError(
            f"asymrnr.profile does not record {component} under context parallelism (every rank holds only a "
            "shard of the tokens); profile without enable_parallelism, and spread the prompts over the GPUs "
            "instead: torchrun --nproc-per-node N asymrnr-calibrate ... (docs/distributed.md)"
        )


@dataclass(frozen=True)
class ShardPartition(Partition):
    """A :class:`~asymrnr.matching.Partition` restricted to one shard, indices local to it.

    Attributes:
        start, length: the shard (``num_tokens`` is ``length``).
        src_counts, dst_counts: sources / destinations of every rank's shard, in rank order (the same on
            every rank, so that every rank chooses the same counts and buffer sizes without talking).
    """

    start: int = 0
    length: int = 0
    src_counts: tuple[int, ...] = ()
    dst_counts: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return self.length

    def to(self, device) -> "ShardPartition":
        return dataclasses.replace(self, dst_idx=self.dst_idx.to(device), src_idx=self.src_idx.to(device),
                                   random_scores=self.random_scores.to(device))


def restrict(part: Partition, shard: Shard, rank: int | None = None) -> ShardPartition:
    """The global partition ``part`` restricted to the shard of ``rank`` (default: ``shard.rank``).

    Destinations and sources keep their global roles; indices become local (``idx - start``), the sources'
    random scores are kept with them."""
    rank = shard.rank if rank is None else rank
    start, length = shard.bounds[rank]
    edges = torch.tensor([s for s, _ in shard.bounds] + [shard.bounds[-1][0] + shard.bounds[-1][1]],
                         dtype=part.dst_idx.dtype, device=part.dst_idx.device)
    dst_edges = torch.searchsorted(part.dst_idx, edges).tolist()
    src_edges = torch.searchsorted(part.src_idx, edges).tolist()
    d0, d1 = dst_edges[rank], dst_edges[rank + 1]
    s0, s1 = src_edges[rank], src_edges[rank + 1]
    return ShardPartition(
        part.grid, part.stride, part.dst_idx[d0:d1] - start, part.src_idx[s0:s1] - start, part.random_scores[s0:s1],
        start=start, length=length,
        src_counts=tuple(b - a for a, b in zip(src_edges, src_edges[1:])),
        dst_counts=tuple(b - a for a, b in zip(dst_edges, dst_edges[1:])),
    )


def local_count(n: int, part: ShardPartition, world: int, *, across: bool) -> int:
    """Tokens each rank drops for a global count ``n``: ``n // world``, at most the fewest sources of any
    shard. Matched only within shards (``across=False``), none at all when some shard holds no destination."""
    if n <= 0 or not any(part.dst_counts):
        return 0
    if not across and min(part.dst_counts) == 0:
        return 0
    return min(n // world, min(part.src_counts))


_WARNED: set = set()


def warn_clamped(grid, block: int, feature: str, n: int, count: int, world: int, part: ShardPartition) -> None:
    """Say (once per case) that a shard cannot drop its share of ``n`` tokens: never clamp silently."""
    key = (tuple(grid), block, feature, n, world)
    if key in _WARNED:
        return
    _WARNED.add(key)
    why = ("some rank's shard holds no destination" if min(part.dst_counts, default=0) == 0
           else f"the fewest sources on a rank's shard are {min(part.src_counts)}")
    logger.warning(
        "context parallelism over %d ranks: block %d %s drops %d tokens per rank instead of %d (%d of %d in all) on "
        "the token grid %s: %s; a grid whose frames split evenly over the ranks avoids it",
        world, block, feature, count, n // world, count * world, n, tuple(grid), why)


# ------------------------------------------------------------------- matching across shards (real ranks)


@dataclass
class AcrossReduction:
    """A shard's reduction whose dropped sources may restore from a destination of another rank.

    ``keep_idx [G, M]`` (local: the shard's destinations, then its kept sources); ``restore_idx [G, N_local]``
    indexes ``[reduced output (M) | destination pool (world * pool_width)]``, where the pool holds every
    rank's destination outputs (:func:`destination_pool`), ``pool_width`` slots per rank."""

    keep_idx: torch.Tensor
    restore_idx: torch.Tensor
    num_dst: int
    pool_width: int


def _pool_slots(dst_counts: Sequence[int], device) -> tuple[torch.Tensor, int]:
    """Pool slot of every global destination (ranks padded to the largest count), and that count."""
    width = max(dst_counts)
    slots = [r * width + torch.arange(c, device=device) for r, c in enumerate(dst_counts)]
    return torch.cat(slots), width


def _gather_padded(x: torch.Tensor, count: int, width: int, dim: int, shard: Shard) -> torch.Tensor:
    """All ranks' first ``count`` entries of ``x`` along ``dim``, each padded to ``width``: ``world * width``
    entries along ``dim``, rank by rank (equal shapes for the collective)."""
    import torch.distributed as dist

    x = x.narrow(dim, 0, count)
    if count < width:
        shape = list(x.shape)
        shape[dim] = width - count
        x = torch.cat([x, x.new_zeros(shape)], dim)
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((shard.world * width, *x.shape[1:]))
    dist.all_gather_into_tensor(out, x, group=shard.group)
    return out.movedim(0, dim)


def match_across(part: ShardPartition, shard: Shard, feats: torch.Tensor, granularity: str, metric: str) -> Matching:
    """Match this shard's sources against the destinations of every shard (one all-gather of the
    destinations' features, about 1/8 of the tokens at stride (2, 2, 2)). ``order_dst`` then indexes the
    global destinations, in rank order."""
    gran = "joint" if feats.dim() == 3 else granularity
    src = matching_features(feats, part.src_idx, gran)  # [G, Ns_local, C]
    mine = matching_features(feats, part.dst_idx, gran)  # [G, Nd_local, C]
    slots, width = _pool_slots(part.dst_counts, feats.device)
    pool = _gather_padded(mine, part.num_dst, width, 1, shard)  # [G, world * width, C]
    dst = pool.index_select(1, slots)
    return compute_matching(src, dst, metric, random_scores=part.random_scores)


def reduction_across(part: ShardPartition, matching: Matching, n_r: int) -> AcrossReduction:
    """Index tensors that drop this shard's ``n_r`` best-matched sources, restoring them from the pool."""
    g = matching.order.shape[0]
    n, nd = part.num_tokens, part.num_dst
    dev = matching.order.device
    slots, width = _pool_slots(part.dst_counts, dev)
    keep_idx = torch.cat([part.dst_idx.unsqueeze(0).expand(g, nd), part.src_idx[matching.order[:, n_r:]]], dim=1)
    drop_idx = part.src_idx[matching.order[:, :n_r]]
    m = n - n_r
    restore_idx = torch.empty((g, n), dtype=torch.long, device=dev)
    restore_idx.scatter_(1, keep_idx, torch.arange(m, device=dev).unsqueeze(0).expand(g, m))
    restore_idx.scatter_(1, drop_idx, m + slots[matching.order_dst[:, :n_r]])
    return AcrossReduction(keep_idx, restore_idx, nd, width)


def destination_pool(out: torch.Tensor, red: AcrossReduction, shard: Shard, seq_dim: int,
                     start: int = 0) -> torch.Tensor:
    """``out`` (the attention output of the reduced sequence; its video part, from ``start``, begins with the
    shard's destinations) with every rank's destination outputs appended along ``seq_dim``, so that
    ``red.restore_idx`` can restore from any of them."""
    mine = out.narrow(seq_dim, start, out.shape[seq_dim] - start)
    return torch.cat([out, _gather_padded(mine, red.num_dst, red.pool_width, seq_dim, shard)], dim=seq_dim)


# ---------------------------------------------------------------------- one process, every shard at once


def simulated_matching(part: Partition, shard: Shard, feats: torch.Tensor, granularity: str, metric: str,
                       across: bool) -> tuple:
    """Per-shard matchings of ``feats`` (the whole video, ``[B, N, C]`` or ``[B, H, N, D]``), as the ranks
    compute them: against the destinations of every shard (``across``) or of their own shard only."""
    gran = "joint" if feats.dim() == 3 else granularity
    all_dst = matching_features(feats, part.dst_idx, gran) if across else None
    seq = 1 if feats.dim() == 3 else 2
    out = []
    for r in range(shard.world):
        local = restrict(part, shard, r)
        x = feats.narrow(seq, local.start, local.length)
        src = matching_features(x, local.src_idx, gran)
        dst = all_dst if across else matching_features(x, local.dst_idx, gran)
        out.append((local, compute_matching(src, dst, metric, random_scores=local.random_scores)))
    return (across, tuple(out))


def simulated_reduction(part: Partition, shard: Shard, matchings: tuple, n_local: int) -> Reduction:
    """One :class:`~asymrnr.matching.Reduction` of the whole video equal to every rank's reduction side by
    side: the reduced sequence is the ranks' reduced shards in rank order, as the collectives assemble it,
    and a dropped token restores from its destination wherever that lies."""
    across, per_rank = matchings
    dev = part.dst_idx.device
    m = [local.length - n_local for local, _ in per_rank]
    offsets = [sum(m[:r]) for r in range(len(m))]
    # slot of global destination j in the concatenated reduced sequence (each shard's destinations first)
    dst_slot = torch.cat([offsets[r] + torch.arange(local.num_dst, device=dev)
                          for r, (local, _) in enumerate(per_rank)])
    keep, restore = [], []
    for r, (local, matching) in enumerate(per_rank):
        g = matching.order.shape[0]
        keep_idx = torch.cat([local.dst_idx.unsqueeze(0).expand(g, local.num_dst),
                              local.src_idx[matching.order[:, n_local:]]], dim=1)
        drop_idx = local.src_idx[matching.order[:, :n_local]]
        drop_dst = matching.order_dst[:, :n_local]
        drop_dst = dst_slot[drop_dst] if across else offsets[r] + drop_dst
        restore_idx = torch.empty((g, local.length), dtype=torch.long, device=dev)
        restore_idx.scatter_(1, keep_idx, offsets[r] + torch.arange(m[r], device=dev).unsqueeze(0).expand(g, m[r]))
        restore_idx.scatter_(1, drop_idx, drop_dst)
        keep.append(keep_idx + local.start)
        restore.append(restore_idx)
    keep_all, restore_all = torch.cat(keep, 1), torch.cat(restore, 1)
    empty = torch.empty((keep_all.shape[0], 0), dtype=torch.long, device=dev)
    return Reduction(keep_all, restore_all, empty, empty, 0)


@contextlib.contextmanager
def simulate_context_parallel(pipe_or_transformer: Any, world: int, *, destinations: str = "global"):
    """Inside the block, the applied schedule reduces as ``world`` context-parallel ranks would: each shard of
    the video tokens on its own (global partition restricted to the shard, equal counts per shard), in this
    one process, with full attention over all shards (what Ulysses and ring compute).

    For measuring on one device what sharding costs in quality (docs/distributed.md, and
    ``scripts/measure_cp_quality.py``), and for tests. ``destinations="global"`` is what the runtime does on
    real ranks (Q and K/V match destinations of every shard); ``"local"`` matches within each shard only."""
    from .runtime.apply import runtimes

    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if destinations not in ("local", "global"):
        raise ValueError(f"destinations must be 'local' or 'global', got {destinations!r}")
    found = list(runtimes(pipe_or_transformer).values())
    if not found:
        raise AsymRnRError("asymrnr is not applied to this pipeline; call asymrnr.apply(pipe, schedule) first")
    for rt in found:  # matchings of another kind must not be reused across the switch
        rt.cache.clear()
        rt.simulate_shards = (world, destinations)
    try:
        yield
    finally:
        for rt in found:
            rt.cache.clear()
            rt.simulate_shards = None


__all__ = [
    "RankContext", "env_context", "process_group", "rank_device", "all_gather_object", "gather_rounds", "RankFailed",
    "Terminated", "sigterm_interrupts",
    "Shard", "shard_bounds", "shard_of", "context_parallel_config", "check_context_parallel", "ShardPartition",
    "restrict", "local_count", "warn_clamped", "AcrossReduction", "match_across", "reduction_across",
    "destination_pool", "simulate_context_parallel", "simulated_matching", "simulated_reduction",
]
