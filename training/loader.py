"""A torch DataLoader that decodes whole batches straight into a reused ring of shared-memory buffers.

A plain ``DataLoader`` over :class:`~training.dataset.CorpusDataset` spends more time moving a
batch than decoding it: every item becomes its own float32 tensor, and ``default_collate`` in a
worker stacks them into freshly allocated shared memory, whose page faults cost more than the
blosc decode (bench/README.md, "Loader"). Here each batch is decoded by one worker, patch by
patch, into a slot of a ring of buffers that the main process allocates once and shares with the
workers; the worker returns views of that slot (torch passes a handle, no bytes). Where the batch
is normalised decides what the ring holds: with an accelerator (``device``) the ring holds int16
counts, and the batch is normalised on the device after it arrives; without one, a dataset with
``normalize=True`` gets a float32 ring, and each worker normalises every patch into it right after
decoding it (the same arithmetic, so the same bits), so normalisation scales with the workers
instead of running in the main process.

The ring has ``prefetch_factor x num_workers + 2`` slots (2 without workers), handed out round-robin
in the order the batch sampler is drawn; the DataLoader keeps at most ``prefetch_factor x
num_workers`` batches in flight and returns them in order, so a slot is written again only when the
second batch after it is drawn, in this pass or the next. Batches without an accelerator, raw
(``normalize=False``) or normalised, are views into the ring: keep one past the next batch only as a
``.clone()``. Batches pinned or copied to an accelerator are copies and stay valid. One pass runs
at a time: starting a new one ends the previous pass first. A pass that ends early (``break``, an
error) stops its workers, unless they are persistent (then torch lets their last tasks finish
before it hands out new ones), and gives back the slots it drew but never delivered, so no stale
batch ever writes a slot that a new one uses.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from spectral_corpus.corpus_files import is_object_store
from spectral_corpus.training.dataset import CorpusDataset
from spectral_corpus.training.sampler import ShardAwareSampler

#: The ring holds raw counts, or normalised images when the workers normalise (no accelerator).
RING_DTYPE = torch.int16
NORMALISED_DTYPE = torch.float32
#: Torch puts shared memory for workers in this file system.
SHARED_MEMORY = "/dev/shm"

#: A batch as the batch sampler hands it to a worker: the ring slot to fill and the item indices.
SlotBatch = tuple[int, list[int]]


class SlotBatchSampler(Sampler[SlotBatch]):
    """Group a sampler's indices into batches and give each the next ring slot, round-robin.

    ``drawn`` carries across epochs and passes, so a new pass starts in the slot after the last
    batch delivered (the loader winds it back over batches drawn but never delivered).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, slots: int) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.slots = slots
        self.drawn = 0

    def __iter__(self) -> Iterator[SlotBatch]:
        for indices in self.batches:
            slot = self.drawn % self.slots
            self.drawn += 1
            yield slot, indices

    def __len__(self) -> int:
        return len(self.batches)


class RingDataset(Dataset[dict[str, Any]]):
    """What the DataLoader's workers see: ``__getitems__`` fills one ring slot with a whole batch.

    An int16 ring receives raw counts, a float32 ring normalised images (``CorpusDataset.read_batch``).
    """

    def __init__(self, dataset: CorpusDataset, rings: dict[str, torch.Tensor]) -> None:
        self.dataset, self.rings = dataset, rings

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, batch: SlotBatch) -> dict[str, Any]:
        slot, indices = batch
        images = {key: ring[slot, : len(indices)] for key, ring in self.rings.items()}
        metadata = self.dataset.read_batch(indices, {key: image.numpy() for key, image in images.items()})
        return {**images, **metadata}


def _already_batched(batch: dict[str, Any]) -> dict[str, Any]:
    """The collate function: ``RingDataset`` returns whole batches."""
    return batch


class PatchLoader(DataLoader[dict[str, Any]]):
    """Batches of a :class:`CorpusDataset`, decoded by ``num_workers`` processes into a shared ring.

    Batches are dicts with the keys and values of ``default_collate`` of the dataset's items. With an
    accelerator ``device`` the images (``image``, and ``image2`` with two views) cross as int16 and are
    normalised there (the whole batch is moved, asynchronously from pinned memory with
    ``pin_memory=True``); without one (``device`` None or a CPU) the workers normalise them into a
    float32 ring, twice the bytes of an int16 one. A dataset with ``normalize=False`` gives the int16
    counts instead of float32. Without an accelerator batches are views into the ring (see the
    module docstring). ``sampler`` defaults to a :class:`ShardAwareSampler` for this rank;
    ``set_epoch`` forwards to it. Other keyword arguments go to ``DataLoader``.
    """

    def __init__(
        self,
        dataset: CorpusDataset,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        *,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        **kwargs: Any,
    ) -> None:
        if num_workers and is_object_store(dataset.root):
            # obstore's I/O runtime does not survive a fork: workers reading a bucket are spawned
            kwargs.setdefault("multiprocessing_context", "spawn")
        target = torch.device(device) if device is not None else None
        on_accelerator = target is not None and target.type != "cpu"
        #: True when the workers write normalised float32 into the ring (no accelerator to do it).
        self.normalises_in_workers = dataset.normalize and not on_accelerator
        dtype = NORMALISED_DTYPE if self.normalises_in_workers else RING_DTYPE
        slots = (prefetch_factor * num_workers if num_workers else 0) + 2
        shape = (slots, batch_size, *dataset.image_shape())
        if num_workers:
            _check_shared_memory(len(dataset.view_keys) * math.prod(shape) * dtype.itemsize)
        rings = {key: _ring(shape, dtype, shared=num_workers > 0) for key in dataset.view_keys}
        self.index_sampler = sampler if sampler is not None else ShardAwareSampler(dataset)
        super().__init__(
            RingDataset(dataset, rings),
            batch_sampler=SlotBatchSampler(self.index_sampler, batch_size, drop_last, slots),  # type: ignore[arg-type]
            collate_fn=_already_batched,  # type: ignore[arg-type]
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor if num_workers else None,
            in_order=True,
            **kwargs,
        )
        self.view_keys = dataset.view_keys
        self.target = target
        #: The accelerator's normalisation of arrived int16 batches (None when the workers normalise).
        self.normalize = dataset.normalizer().to(target) if dataset.normalize and on_accelerator else None
        self.ring_bytes = sum(ring.nbytes for ring in rings.values())
        self._live: weakref.ref[Generator[dict[str, Any], None, None]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the sampler uses next (when it has epochs)."""
        set_epoch = getattr(self.index_sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        previous = self._live() if self._live is not None else None
        if previous is not None:
            previous.close()  # the pass a caller still holds ends before this one fills the ring
        batches = self._batches()
        self._live = weakref.ref(batches)  # a pass nobody holds ends (and stops its workers) when collected
        return batches

    def _batches(self) -> Generator[dict[str, Any], None, None]:
        slots: SlotBatchSampler = self.batch_sampler  # type: ignore[assignment]
        start, delivered = slots.drawn, 0
        inner = super().__iter__()
        try:
            for batch in inner:
                delivered += 1
                yield self._deliver(batch)
        finally:
            if not self.persistent_workers:
                stop = getattr(inner, "_shutdown_workers", None)  # what torch runs when the iterator dies
                if stop is not None:
                    stop()
            slots.drawn = start + delivered

    def _deliver(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.target is not None:
            batch = {key: value.to(self.target, non_blocking=True) for key, value in batch.items()}
        if self.normalize is not None:
            batch.update({key: self.normalize(batch[key]) for key in self.view_keys})
        return batch


def _ring(shape: Sequence[int], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """A ring of ``shape`` (slots, batch, C, H, W); in shared memory when ``shared``; every page touched."""
    ring = torch.empty(tuple(shape), dtype=dtype)
    if shared:
        ring.share_memory_()
    ring.numpy().fill(0)
    return ring


def _check_shared_memory(needed: int, path: str = SHARED_MEMORY) -> None:
    """Refuse a ring that the shared-memory file system cannot hold (touching it would kill us with SIGBUS)."""
    try:
        stats = os.statvfs(path)
    except OSError:  # no such file system here: torch will say what it lacks
        return
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise MemoryError(
            f"PatchLoader needs {needed / 2**30:.2f} GiB of shared memory for its ring of batches, but {path} "
            f"has {free / 2**30:.2f} GiB free: lower batch_size, num_workers or prefetch_factor, or give it "
            "more (in a container: docker run --shm-size)"
        )
