"""A Zarr store whose writes reach the disk in the order they were made, so that Zarr's own writes commit in order.

Zarr's ``LocalStore`` writes each chunk (and each ``zarr.json``) under a temporary name and renames it,
but never fsyncs: after a power cut a renamed chunk can be empty, or a done-mark can be on the disk
while the values it marks are not. `DurableStore` commits each key as the rest of the store commits
its files (`landscape_cli._io`): the data fsynced, then renamed into place, then its directory fsynced
(and a directory made for it synced in its parent). Outside a batch every write is durable when it
returns, and an array write returns only once every chunk it touches has been stored, so a chunk
written after another reaches the disk after it.

A batch (`DurableStore.batched`: a grid's row, its centre, the arrays of a new group) collects its
writes under their temporary names and commits them when it ends, in steps: every temporary file
fsynced at once, then, per stage (`Batch.barrier` starts the next: a row's done-mark after its values),
the stage's renames and the fsyncs of their directories at once. The fsyncs of a step run in parallel
threads, so the file system commits them together (a handful of disk flushes per row, not one per file),
and a stage is renamed only once every earlier stage is durable. A read of a key the batch holds (or a
listing) commits the batch first, so Zarr always reads what it wrote. Removing a chunk (Zarr removes a
chunk that holds only the fill value) is ordered and synced like a write, so a done-mark cleared before
a row is recomputed stays cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.common import AccessModeLiteral
from zarr.storage import LocalStore

from landscape_cli._io import PARTIAL_SUFFIX, all_at_once, mkdirs, mkdirs_durably, sync_dir, sync_fd, sync_file


@dataclass
class _Write:
    tmp: Path
    path: Path
    made: list[Path]  # directories made for it, outermost first (their entries not synced yet)


@dataclass
class _Remove:
    path: Path


@dataclass
class _Stage:
    ops: list[_Write | _Remove] = field(default_factory=list)


class DurableStore(LocalStore):
    """Zarr's local store, each write of a key durable in order: data, rename, directory."""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._lock = threading.RLock()
        self._stages: list[_Stage] | None = None  # the open batch's writes, by stage; None outside a batch
        self._held: set[Path] = set()  # the paths the batch writes or removes

    # -- batches --

    @contextlib.contextmanager
    def batched(self) -> Iterator[Callable[[], None]]:
        """A block whose writes are committed together when it ends (see the module's description); yields the
        barrier: what is written after calling it is renamed only once what was written before is durable."""
        if self._stages is not None:  # nested: the outer batch commits
            yield self._barrier
            return
        self._stages = [_Stage()]
        try:
            yield self._barrier
        except BaseException:
            self._discard()
            raise
        try:
            self.commit()
        finally:
            self._discard()  # the batch closed (nothing left to discard once committed)

    def _barrier(self) -> None:
        with self._lock:
            if self._stages is not None and self._stages[-1].ops:
                self._stages.append(_Stage())

    def commit(self) -> None:
        """What the open batch holds, made durable in order (the batch stays open)."""
        with self._lock:
            stages = self._stages
            if stages is None or not any(s.ops for s in stages):
                return
            self._stages, self._held = [_Stage()], set()
        try:
            all_at_once(sync_file, [op.tmp for s in stages for op in s.ops if isinstance(op, _Write)])
            for stage in stages:
                dirs: set[Path] = set()
                for op in stage.ops:
                    if isinstance(op, _Write):
                        os.replace(op.tmp, op.path)
                        dirs.update(d.parent for d in op.made)
                        dirs.add(op.path.parent)
                    else:
                        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                            op.path.unlink()
                            dirs.add(op.path.parent)
                all_at_once(sync_dir, sorted(dirs))
        finally:
            for s in stages:
                for op in s.ops:
                    if isinstance(op, _Write):
                        with contextlib.suppress(OSError):
                            op.tmp.unlink()

    def _discard(self) -> None:
        with self._lock:
            stages, self._stages, self._held = self._stages or [], None, set()
        for s in stages:
            for op in s.ops:
                if isinstance(op, _Write):
                    with contextlib.suppress(OSError):
                        op.tmp.unlink()

    def _holds(self, key: str | None = None) -> bool:
        """Whether the open batch holds `key` (anything: None): a read of it commits the batch first."""
        return self._stages is not None and bool(self._held) and (key is None or (self.root / key) in self._held)

    def _settled(self, key: str | None = None) -> None:
        if self._holds(key):
            self.commit()

    async def _settle(self, key: str | None = None) -> None:
        if self._holds(key):
            await asyncio.to_thread(self.commit)

    # -- writing one key --

    def write(self, path: Path, data: bytes | memoryview, exclusive: bool = False) -> None:
        """`data` stored at `path` under a temporary name, fsynced, renamed (`exclusive`: linked, never replacing:
        FileExistsError if `path` exists), its directory synced; in a batch (not `exclusive`), at its end."""
        made = mkdirs(path.parent)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                synced = self._stages is None or exclusive
                if synced:
                    f.flush()
                    sync_fd(f.fileno())
            with self._lock:
                if self._stages is not None and not exclusive:
                    self._stages[-1].ops.append(_Write(tmp, path, made))
                    self._held.add(path)
                    return
            if not synced:  # (the batch ended meanwhile)
                sync_file(tmp)
            self.commit()  # (exclusive in a batch: after what the batch holds)
            if exclusive:
                os.link(tmp, path)
            else:
                os.replace(tmp, path)
            all_at_once(sync_dir, sorted({path.parent, *(d.parent for d in made)}))
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            tmp.unlink()  # (after a link)

    def remove(self, path: Path) -> None:
        """The file at `path` removed (if there), its directory synced; in a batch, at its end."""
        with self._lock:
            if self._stages is not None:
                self._stages[-1].ops.append(_Remove(path))
                self._held.add(path)
                return
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        sync_dir(path.parent)

    # -- Zarr's store interface: writes --

    async def _open(self, *, mode: AccessModeLiteral | None = None) -> None:
        if not self.read_only:
            await asyncio.to_thread(mkdirs_durably, self.root)
        await super()._open()

    def _ensure_open_sync(self) -> None:
        if not self._is_open and not self.read_only:
            mkdirs_durably(self.root)
        super()._ensure_open_sync()

    def _value(self, value: Buffer) -> memoryview:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"DurableStore.set(): `value` must be a Buffer instance, got {type(value)}")
        return memoryview(value.as_buffer_like())

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self.write, self.root / key, self._value(value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        if await self.exists(key):  # (Zarr asks this of a group's zarr.json at every array it makes)
            return
        with contextlib.suppress(FileExistsError):
            await asyncio.to_thread(self.write, self.root / key, self._value(value), True)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self.write(self.root / key, self._value(value))

    async def delete(self, key: str) -> None:
        self._check_writable()
        path = self.root / key
        if path.is_dir():
            await self._settle()
            await super().delete(key)
            await asyncio.to_thread(sync_dir, path.parent)
        else:
            await asyncio.to_thread(self.remove, path)

    def delete_sync(self, key: str) -> None:
        self._ensure_open_sync()
        self._check_writable()
        path = self.root / key
        if path.is_dir():
            self._settled()
            super().delete_sync(key)
            sync_dir(path.parent)
        else:
            self.remove(path)

    async def delete_dir(self, prefix: str) -> None:
        await self._settle()
        await super().delete_dir(prefix)
        parent = (self.root / prefix).parent
        if parent.is_dir():
            await asyncio.to_thread(sync_dir, parent)

    async def clear(self) -> None:
        self._discard()
        await super().clear()
        await asyncio.to_thread(all_at_once, sync_dir, [self.root, self.root.parent])

    # -- reads: what the open batch holds is committed first --

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        await self._settle(key)
        return await super().get(key, prototype, byte_range)

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None,
                 byte_range: ByteRequest | None = None) -> Buffer | None:
        self._settled(key)
        return super().get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            await self._settle(key)
        return await super().get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        await self._settle(key)
        return await super().exists(key)

    async def getsize(self, key: str) -> int:
        await self._settle(key)
        return await super().getsize(key)

    async def list(self) -> AsyncIterator[str]:
        await self._settle()
        async for key in super().list():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        await self._settle()
        async for key in super().list_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        await self._settle()
        async for key in super().list_dir(prefix):
            yield key
