"""Where a model runs and in which precision: ``--device`` / ``--dtype`` and ``load_model(device=,
dtype=)``.

Devices: ``cpu`` (the default), ``cuda``, ``cuda:N``, ``mps``, or ``auto`` (CUDA when available,
else MPS when available, else the CPU). Dtypes: ``float32`` (the default), ``bfloat16``,
``float16`` (also ``fp32``, ``bf16``, ``fp16``, ``half``). A device that is not there, or a dtype
the device cannot run, is one :class:`~ropelab.core.errors.RopelabError` naming it.

The dtype is the dtype of the weights and activations only. Whatever it is, positions and RoPE
angles are float32 (the cos/sin tables are built in float32 and cast to the activation dtype only
at the multiply, as Hugging Face Llama does), the position encoding's own buffers (angles, ALiBi
slopes, FIRE's threshold) stay float32 under ``model.to(dtype)``, attention biases are added in
float32, the softmax statistics of windowed attention are float32, and losses and log-probabilities
are computed from float32 logits.
"""

from __future__ import annotations

import torch

from ropelab.core.errors import RopelabError

DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")
#: accepted names -> dtype; the first name of each dtype is its canonical one
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
CANONICAL_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "cpu (default), cuda, cuda:N, mps, or auto (cuda when available, else mps, else cpu)"
DTYPE_HELP = "weights and activations: float32 (default), bfloat16 or float16; angles and losses stay float32"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """A usable ``torch.device`` for ``device`` (a name, ``auto`` or a ``torch.device``), or one clear
    :class:`RopelabError` when it is unknown or not available on this machine."""
    if device is None:
        return torch.device("cpu")
    text = str(device).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise RopelabError(f"unknown device {str(device)!r}; use one of: {', '.join(DEVICES)}")
    if resolved.type == "cpu" and resolved.index is not None:  # torch parses cpu:N, but loading cannot use it
        if resolved.index != 0:
            raise RopelabError(
                f"unknown device {str(device)!r}: the CPU has no index {resolved.index}; use --device cpu"
            )
        resolved = torch.device("cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"this torch {torch.__version__} has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise RopelabError(f"device {text!r}: CUDA is not available ({build}); use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RopelabError(f"device {text!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if resolved.type == "mps" and not _mps_available():
        raise RopelabError(f"device {text!r}: Apple MPS is not available on this machine; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    """``torch.float32``, ``torch.bfloat16`` or ``torch.float16`` for a name or dtype; anything else is
    one clear :class:`RopelabError`."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise RopelabError(f"unsupported dtype {dtype}; use one of: {', '.join(CANONICAL_DTYPES)}")
        return dtype
    text = str(dtype).strip().lower().removeprefix("torch.")
    if text not in DTYPES:
        raise RopelabError(f"unknown dtype {str(dtype)!r}; use one of: {', '.join(CANONICAL_DTYPES)}")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    """``bfloat16`` for ``torch.bfloat16`` (the canonical name)."""
    return str(dtype).removeprefix("torch.")


def check_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raise one :class:`RopelabError` when ``device`` cannot run the model's operations in
    ``dtype`` (a matmul and attention on tiny tensors are tried: CUDA without bf16, an MPS or a
    CPU build without fp16/bf16 kernels)."""
    if dtype == torch.float32:
        return
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RopelabError(f"dtype bfloat16 is not supported on {device} ({torch.cuda.get_device_name(device)})")
    try:
        x = torch.ones(1, 1, 2, 2, device=device, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(x @ x, x, x, is_causal=True)
    except (RuntimeError, TypeError, NotImplementedError) as error:
        reason = (str(error).splitlines() or ["unsupported"])[0]
        raise RopelabError(
            f"dtype {dtype_name(dtype)} is not supported on {device} by this torch {torch.__version__} ({reason}); "
            "use --dtype float32"
        ) from None


def resolve_placement(
    device: str | torch.device | None = "cpu", dtype: str | torch.dtype | None = "float32"
) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` checked together: both exist here and the device runs the dtype."""
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    check_supported(device, dtype)
    return device, dtype
