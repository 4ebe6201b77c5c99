"""Open descriptors of hot slice files, kept so the hit path reads without open/close."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable

from .index import SliceId

__all__ = ["DescriptorCache"]


class DescriptorCache:
    """A bounded LRU of open slice descriptors; the owner closes entries whose file left."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._fds: OrderedDict[SliceId, int] = OrderedDict()

    def __contains__(self, slice_id: SliceId) -> bool:
        return slice_id in self._fds

    def get(self, slice_id: SliceId) -> int | None:
        fd = self._fds.get(slice_id)
        if fd is not None:
            self._fds.move_to_end(slice_id)
        return fd

    def put(self, slice_id: SliceId, fd: int) -> int:
        self._fds[slice_id] = fd
        if len(self._fds) > self._capacity:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        return fd

    def close(self, slice_ids: Iterable[SliceId]) -> None:
        for slice_id in slice_ids:
            fd = self._fds.pop(slice_id, None)
            if fd is not None:
                os.close(fd)

    def close_objects(self, object_ids: set[str]) -> None:
        self.close([s for s in self._fds if s.object_id in object_ids])

    def close_all(self) -> None:
        self.close(list(self._fds))
