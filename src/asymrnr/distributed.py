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
from .matching import Matching, Partition, compute_matching, make_reduction, matching_features

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
            raise AsymRnRError(f"the environment variable {name}={value!r} is not an integer; launch with torchrun") from None

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
    """

    rank: int
    world: int
    bounds: tuple[tuple[int, int], ...]
    simulated: bool = False

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
    world = int(mesh.size())
    rank = int(dist.get_rank(mesh.get_group()))
    uneven = bool(getattr(cp, "ulysses_anything", False) or getattr(cp, "ring_anything", False))
    return Shard(rank, world, shard_bounds(num_tokens, world, uneven=uneven))


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
        min_src, min_dst: the fewest sources / destinations of any rank's shard (the same on every rank).
    """

    start: int = 0
    length: int = 0
    min_src: int = 0
    min_dst: int = 0

    @property
    def num_tokens(self) -> int:
        return self.length

    def to(self, device) -> "ShardPartition":
        return dataclasses.replace(self, dst_idx=self.dst_idx.to(device), src_idx=self.src_idx.to(device),
                                   random_scores=self.random_scores.to(device))


def restrict(part: Partition, shard: Shard, rank: int | None = None) -> ShardPartition:
    """The global partition ``part`` restricted to the shard of ``rank`` (default: ``shard.rank``).

    Destinations and sources keep their global roles; indices become local (``idx - start``), the sources'
    random scores are kept with them. The smallest counts over all shards come along, so that every rank
    can choose the same reduction count without talking to the others."""
    rank = shard.rank if rank is None else rank
    start, length = shard.bounds[rank]
    edges = torch.tensor([s for s, _ in shard.bounds] + [shard.bounds[-1][0] + shard.bounds[-1][1]],
                         dtype=part.dst_idx.dtype, device=part.dst_idx.device)
    dst_counts = torch.diff(torch.searchsorted(part.dst_idx, edges))
    src_counts = torch.diff(torch.searchsorted(part.src_idx, edges))
    d0, d1 = int(torch.searchsorted(part.dst_idx, start)), int(torch.searchsorted(part.dst_idx, start + length))
    s0, s1 = int(torch.searchsorted(part.src_idx, start)), int(torch.searchsorted(part.src_idx, start + length))
    return ShardPartition(part.grid, part.stride, part.dst_idx[d0:d1] - start, part.src_idx[s0:s1] - start,
                          part.random_scores[s0:s1], start=start, length=length, min_src=int(src_counts.min()),
                          min_dst=int(dst_counts.min()))


def local_count(n: int, part: ShardPartition, world: int) -> int:
    """Tokens each rank drops for a global count ``n``: ``n // world``, at most the fewest sources of any
    shard, and none at all when some shard holds no destination (equal counts on every rank)."""
    if n <= 0:
        return 0
    if part.min_dst == 0:
        return 0
    return min(n // world, part.min_src)


_WARNED: set = set()


def warn_clamped(grid, block: int, feature: str, n: int, count: int, world: int, part: ShardPartition) -> None:
    """Say (once per case) that a shard cannot drop its share of ``n`` tokens: never clamp silently."""
    key = (tuple(grid), block, feature, n, world)
    if key in _WARNED:
        return
    _WARNED.add(key)
    why = ("some rank's shard holds no destination" if part.min_dst == 0
           else f"the fewest sources on a rank's shard are {part.min_src}")
    logger.warning(
        "context parallelism over %d ranks: block %d %s drops %d tokens per rank instead of %d (%d of %d in all) on "
        "the token grid %s: %s; a grid whose frames split evenly over the ranks avoids it",
        world, block, feature, count, n // world, count * world, n, tuple(grid), why)


# ---------------------------------------------------------------------- one process, every shard at once


def simulated_matching(part: Partition, shard: Shard, feats: torch.Tensor, granularity: str, metric: str,
                       destinations: str = "local") -> tuple:
    """Per-shard matchings of ``feats`` (the whole video, ``[B, N, C]`` or ``[B, H, N, D]``), as the ranks
    compute them. ``destinations="global"`` matches each shard's sources against every destination (what an
    all-gather of the destinations would buy; measured in docs/distributed.md)."""
    gran = "joint" if feats.dim() == 3 else granularity
    all_dst = matching_features(feats, part.dst_idx, gran) if destinations == "global" else None
    out = []
    for r in range(shard.world):
        local = restrict(part, shard, r)
        seq = 1 if feats.dim() == 3 else 2
        x = feats.narrow(seq, local.start, local.length)
        src = matching_features(x, local.src_idx, gran)
        dst = all_dst if all_dst is not None else matching_features(x, local.dst_idx, gran)
        out.append((local, compute_matching(src, dst, metric, random_scores=local.random_scores)))
    return (destinations, tuple(out))


def simulated_reduction(part: Partition, shard: Shard, matchings: tuple, n_local: int):
    """One :class:`~asymrnr.matching.Reduction` of the whole video equal to every rank's local reduction side
    by side: the reduced sequence is the ranks' reduced shards in rank order, as the collectives assemble it."""
    from .matching import Reduction

    destinations, per_rank = matchings
    keep, restore, drop, drop_dst = [], [], [], []
    offset = 0
    # global destination j sits at slot (offset of its shard) + (its rank among that shard's destinations)
    dst_slot = None
    if destinations == "global":
        offsets, slots = [], []
        o = 0
        for local, _ in per_rank:
            slots.append(o + torch.arange(local.num_dst, device=part.dst_idx.device))
            o += local.length - n_local
        dst_slot = torch.cat(slots)
    for local, matching in per_rank:
        if destinations == "global":
            red = _reduce_to_global(local, matching, n_local, dst_slot, offset)
        else:
            red = make_reduction(local, matching, n_local)
            red = Reduction(red.keep_idx, red.restore_idx + offset, red.drop_idx, red.drop_dst + offset, red.num_dst)
        keep.append(red.keep_idx + local.start)
        restore.append(red.restore_idx)
        drop.append(red.drop_idx + local.start)
        drop_dst.append(red.drop_dst)
        offset += local.length - n_local
    return Reduction(torch.cat(keep, 1), torch.cat(restore, 1), torch.cat(drop, 1), torch.cat(drop_dst, 1), -1)


def _reduce_to_global(local: ShardPartition, matching: Matching, n_r: int, dst_slot: torch.Tensor, offset: int):
    """A shard's reduction whose dropped sources restore from their matched destination anywhere."""
    from .matching import Reduction

    g = matching.order.shape[0]
    n = local.num_tokens
    keep_idx = torch.cat([local.dst_idx.unsqueeze(0).expand(g, local.num_dst), local.src_idx[matching.order[:, n_r:]]], 1)
    drop_idx = local.src_idx[matching.order[:, :n_r]]
    drop_dst = dst_slot[matching.order_dst[:, :n_r]]
    restore = torch.empty((g, n), dtype=torch.long, device=keep_idx.device)
    restore.scatter_(1, keep_idx, offset + torch.arange(n - n_r, device=keep_idx.device).unsqueeze(0).expand(g, -1))
    restore.scatter_(1, drop_idx, drop_dst)
    return Reduction(keep_idx, restore, drop_idx, drop_dst, local.num_dst)


@contextlib.contextmanager
def simulate_context_parallel(pipe_or_transformer: Any, world: int, *, destinations: str = "local"):
    """Inside the block, the applied schedule reduces as ``world`` context-parallel ranks would: each shard of
    the video tokens on its own (global partition restricted to the shard, equal counts per shard), in this
    one process, with full attention over all shards (what Ulysses and ring compute).

    For measuring on one device what sharding costs in quality (docs/distributed.md), and for tests.
    ``destinations="global"`` lets every shard's sources match destinations of every shard (not what the
    runtime does under real context parallelism: the measurement that decided it)."""
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
    "Shard", "shard_bounds", "shard_of", "context_parallel_config", "check_context_parallel", "ShardPartition",
    "restrict", "local_count", "warn_clamped", "simulate_context_parallel", "simulated_matching", "simulated_reduction",
]
