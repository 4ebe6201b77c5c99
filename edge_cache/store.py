"""The on-disk layout of the cache. Blocking functions: callers run them in a thread.

    <root>/objects/<id[:2]>/<id>.meta     JSON ObjectMeta of one object version
    <root>/objects/<id[:2]>/<id>.<n>      slice n of that version, exactly its length
    <root>/tmp/                           files being written; emptied at start-up

Every file is written to tmp/ and renamed into place, so a reader never sees a partial file,
and a crash leaves only tmp/ debris, which start-up removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .index import SliceId
from .origin import ObjectMeta
from .sharding import stale_layouts
from .slicing import slice_count, slice_length

__all__ = ["DiskStore", "FoundObject", "clear_stale_layouts"]


def clear_stale_layouts(cache_dir: Path, workers: int) -> list[str]:
    """Delete cache layouts written for another worker count (their owners no longer exist,
    and their bytes would sit outside the bound); returns the names removed."""
    try:
        names = [entry.name for entry in os.scandir(cache_dir)]
    except FileNotFoundError:
        return []
    stale = stale_layouts(names, workers)
    for name in stale:
        shutil.rmtree(cache_dir / name, ignore_errors=True)
    return stale


@dataclass(frozen=True, slots=True)
class FoundObject:
    """An object version found on disk at start-up, with its intact slices (index, mtime)."""

    meta: ObjectMeta
    meta_mtime: float
    slices: tuple[tuple[int, float], ...]


class DiskStore:
    def __init__(self, root: Path, slice_bytes: int) -> None:
        self.root = root
        self.slice_bytes = slice_bytes
        self._objects = root / "objects"
        self._tmp = root / "tmp"

    def slice_path(self, slice_id: SliceId) -> str:
        oid = slice_id.object_id
        return f"{self._objects}/{oid[:2]}/{oid}.{slice_id.index}"

    def _meta_path(self, object_id: str) -> Path:
        return self._objects / object_id[:2] / f"{object_id}.meta"

    def _write_atomically(self, final: Path | str, data: bytes | bytearray | memoryview) -> None:
        temp = self._tmp / secrets.token_hex(8)
        with open(temp, "wb") as handle:
            handle.write(data)
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def write_slice(self, slice_id: SliceId, data: bytes | bytearray | memoryview) -> None:
        self._write_atomically(self.slice_path(slice_id), data)

    def write_meta(self, meta: ObjectMeta) -> None:
        data = json.dumps(meta.to_json(), separators=(",", ":")).encode()
        self._write_atomically(self._meta_path(meta.object_id), data)

    def delete_slices(self, slice_ids: Iterable[SliceId]) -> None:
        for slice_id in slice_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.slice_path(slice_id))

    def delete_object(self, meta: ObjectMeta) -> None:
        """Remove an object version's meta file and every slice file it has."""
        self._meta_path(meta.object_id).unlink(missing_ok=True)
        self.delete_slices(
            SliceId(meta.object_id, i) for i in range(slice_count(meta.size, self.slice_bytes))
        )

    def scan(self) -> list[FoundObject]:
        """Prepare the directories and list what is on disk, deleting anything not servable.

        Deleted: leftovers in tmp/, slices without a readable meta file, slices whose length is
        not the one their meta implies (truncated or foreign files), unknown file names.
        """
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in os.scandir(self._tmp):
            os.unlink(leftover.path)
        found: list[FoundObject] = []
        for shard in os.scandir(self._objects):
            if shard.is_dir(follow_symlinks=False):
                found.extend(self._scan_shard(shard.path))
        return found

    def _scan_shard(self, shard: str) -> list[FoundObject]:
        metas: dict[str, tuple[ObjectMeta, float]] = {}
        slices: dict[str, list[tuple[int, int, float, str]]] = {}
        for entry in os.scandir(shard):
            object_id, _, suffix = entry.name.partition(".")
            stat = entry.stat(follow_symlinks=False)
            if suffix == "meta":
                try:
                    with open(entry.path, "rb") as handle:
                        meta = ObjectMeta.from_json(json.load(handle))
                except (OSError, ValueError, KeyError, TypeError):
                    os.unlink(entry.path)
                    continue
                if meta.object_id != object_id:
                    os.unlink(entry.path)
                    continue
                metas[object_id] = (meta, stat.st_mtime)
            elif suffix.isdigit():
                slices.setdefault(object_id, []).append(
                    (int(suffix), stat.st_size, stat.st_mtime, entry.path)
                )
            else:
                os.unlink(entry.path)
        result = []
        for object_id, pieces in slices.items():
            known = metas.get(object_id)
            intact: list[tuple[int, float]] = []
            for index, size, mtime, path in pieces:
                if (
                    known is not None
                    and index < slice_count(known[0].size, self.slice_bytes)
                    and size == slice_length(index, known[0].size, self.slice_bytes)
                ):
                    intact.append((index, mtime))
                else:
                    os.unlink(path)
            if known is not None:
                result.append(FoundObject(known[0], known[1], tuple(intact)))
        for object_id, (meta, mtime) in metas.items():
            if object_id not in slices:
                result.append(FoundObject(meta, mtime, ()))
        return result
