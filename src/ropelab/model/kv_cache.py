"""The KV cache of :class:`~ropelab.model.transformer.Transformer`: keys, values (and a windowed
method's second key set) of every layer, in buffers written in place."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class KVCache:
    """Keys/values of every layer for the tokens seen so far, and their positions.

    Keys are stored rotated, except for encodings whose rotation depends on the input length
    (dynamic NTK): those keep raw keys and rotate all of them with the current table at each
    step, so layer 0 matches a full recompute exactly. (Deeper layers' cached keys/values were
    computed under the earlier length's angles; no cache can avoid that for dynamic NTK.)

    Each layer's keys and values live in a buffer ``[B, H, capacity, D]`` with room to spare
    (an eighth more, at least 128 tokens): a decode step writes its token in place and the layer
    attends to a view of the filled part, instead of copying the whole cache (``torch.cat``) at
    every step. The buffer is reallocated, with room to spare again, only when it is full.

    ``mask`` remembers which cached tokens are padding (a padded batch's ``attention_mask``), so a
    later call may pass the mask of all tokens or none (its new tokens are then real).
    """

    n_layers: int
    #: tokens to allocate room for at the first write (a prefill followed by decoding whose total
    #: length is known, as in ``generate``); None: the filled length plus an eighth (at least 128)
    capacity: int | None = None
    keys: list[Tensor | None] = field(default_factory=list)
    values: list[Tensor | None] = field(default_factory=list)
    far_keys: list[Tensor | None] = field(default_factory=list)  # windowed methods' second key set
    positions: Tensor | None = None
    filled: list[int] = field(default_factory=list)  # tokens held per layer (keys, values, far keys alike)
    mask: Tensor | None = None  # bool [B, length], True = real token; None = every cached token is real
    default_positions: bool = True  # every cached token sits at its default position 0, 1, 2, ...

    def __post_init__(self) -> None:
        self.keys = [None] * self.n_layers
        self.values = [None] * self.n_layers
        self.far_keys = [None] * self.n_layers
        self.filled = [0] * self.n_layers

    @property
    def length(self) -> int:
        return 0 if self.positions is None else int(self.positions.shape[1])

    def _append(self, store: list[Tensor | None], layer: int, new: Tensor, filled: int) -> Tensor:
        """Write ``new [B, H, t, D]`` after the first ``filled`` tokens of ``store[layer]``; returns
        the view of all ``filled + t`` tokens."""
        need = filled + new.shape[2]
        buffer = store[layer]
        if buffer is None or need > buffer.shape[2] or buffer.shape[:2] != new.shape[:2] or buffer.dtype != new.dtype:
            room = self.capacity if self.capacity is not None and self.capacity >= need else need + max(128, need // 8)
            grown = new.new_empty(*new.shape[:2], room, new.shape[3])
            if buffer is not None and filled:
                grown[:, :, :filled] = buffer[:, :, :filled]
            store[layer] = buffer = grown
        buffer[:, :, filled:need] = new
        return buffer[:, :, :need]

    def update(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        filled = self.filled[layer]
        key = self._append(self.keys, layer, key, filled)
        value = self._append(self.values, layer, value, filled)
        self.filled[layer] = key.shape[2]
        return key, value

    def update_far(self, layer: int, key: Tensor) -> Tensor:
        """The windowed methods' second key set; called after :meth:`update` for the same tokens."""
        return self._append(self.far_keys, layer, key, self.filled[layer] - key.shape[2])

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` tokens, in place: the next tokens are written over the rest
        of the buffers (so a later, shorter prefix must be asked for after a longer one)."""
        self.filled = [min(count, f) for f in self.filled]
        if self.positions is not None:
            self.positions = self.positions[:, :count]
        if self.mask is not None:
            self.mask = self.mask[:, :count]

    def share_far_keys(self) -> None:
        """Use the cached keys as the windowed second key set too, for an encoding whose far key
        tables equal its near ones (``ropelab.pe.sliding``) continuing a cache filled without them."""
        self.far_keys = list(self.keys)
