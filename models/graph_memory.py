"""How many bytes autograd graphs hold: the memory a meta-step's graphs cost, apart
from the allocator (used by benchmarks/meta_step.py and the memory tests)."""

from __future__ import annotations

from torch import Tensor


class SavedBytes:
    """Bytes of the tensors autograd keeps for backward, counted once per storage while any
    graph holds it. Use its `pack` and `unpack` in `torch.autograd.graph.saved_tensors_hooks`;
    `now` is what is held, `peak` its maximum."""

    def __init__(self):
        self.refs: dict[int, int] = {}
        self.now = self.peak = 0

    def pack(self, t: Tensor) -> _Saved:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.refs:
            self.refs[key] = 0
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.refs[key] += 1
        return _Saved(self, key, storage.nbytes(), t)

    @staticmethod
    def unpack(saved: _Saved) -> Tensor:
        return saved.tensor

    def release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.now -= nbytes


class _Saved:
    """One saved tensor; when autograd drops it (its graph is freed), its bytes are released."""

    def __init__(self, owner: SavedBytes, key: int, nbytes: int, tensor: Tensor):
        self.owner, self.key, self.nbytes, self.tensor = owner, key, nbytes, tensor

    def __del__(self):
        self.owner.release(self.key, self.nbytes)
