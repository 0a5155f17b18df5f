"""Optional Triton: detected once, imported only when a kernel runs, and the reason given when it cannot run.

`import kernels` never imports Triton. The Triton launchers call `require_triton(device, op)` first; it raises a
`RuntimeError` that says why the kernel cannot run (Triton missing, tensors not on CUDA and no interpreter) and what
to do instead.
"""

from __future__ import annotations

import functools
import os

import torch

# Triton < 3.4 has no `triton.knobs`; it reads TRITON_INTERPRET from the environment when it is imported, so read the
# flag here once, at import, for the same answer.
_INTERPRET_FLAG_AT_IMPORT = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _import_error() -> str | None:
    """None when Triton imports, else why not (cached: the import is attempted once)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising at import
        return f"Triton is not importable ({type(exc).__name__}: {exc}); install it with `pip install triton` (Linux)"
    return None


def triton_available() -> bool:
    """True when Triton can be imported."""
    return _import_error() is None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 set before Triton was imported)."""
    if _import_error() is not None:
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return _INTERPRET_FLAG_AT_IMPORT


def unavailable_reason(device: str | torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None when they can (the answer is cached per device)."""
    return _unavailable_reason(device.type if isinstance(device, torch.device) else torch.device(device).type)


@functools.cache
def _unavailable_reason(device_type: str) -> str | None:
    # Cached: every launch asks, and neither the Triton install nor the interpreter flag changes in a process.
    err = _import_error()
    if err is not None:
        return err
    device = torch.device(device_type)
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available to PyTorch"
    if interpreting():
        return None
    return (
        f"tensors are on {device.type}: the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
        "Triton is imported (the kernel tests do this); use the *_reference functions on the CPU"
    )


def require_triton(device: str | torch.device, op: str) -> None:
    """Raise `RuntimeError` naming `op` and the reason when the Triton kernels cannot run on `device`."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"{op}: cannot run the Triton kernel: {reason}")


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision for `dtype`, following PyTorch's own matmul setting.

    fp32 inputs use exact fp32 products ("ieee") unless `torch.backends.cuda.matmul.allow_tf32` is on (PyTorch's
    default is off), so the kernel and a PyTorch matmul agree; 16-bit inputs are unaffected ("tf32" is Triton's
    default and means nothing for them).
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)
