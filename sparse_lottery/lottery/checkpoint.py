"""Checkpoints that are written atomically, carry a checksum, and say what they belong to.

File layout: the magic line `SLCKPT1\\n`, an 8-byte little-endian header length, a JSON header
({"sha256", "experiment", "model", "kind", ...}), then the `torch.save` payload. Writing goes
to a temporary file in the same folder, is flushed and fsynced, then renamed over the target
(a rename is atomic on POSIX), so a crash leaves either the old file or the new one, never a
torn one. Reading checks the checksum and that the checkpoint belongs to the expected
experiment (hash) and model (parameter names and shapes); anything else raises
`CheckpointError` saying what differs and what to do — never a silent reuse.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/w.ckpt"
    >>> save(path, {"w": torch.ones(2)}, experiment="abc", kind="weights")
    >>> load(path, experiment="abc", kind="weights")["w"]
    tensor([1., 1.])
"""

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import torch
from torch import nn

MAGIC = b"SLCKPT1\n"


REDO = "delete it and rerun: the step that wrote it is redone"


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt, truncated, or belongs to another experiment or model."""


def model_signature(model: nn.Module) -> str:
    """12 hex digits naming a model's state-dict keys, shapes and dtypes (not its values)."""
    items = sorted((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:12]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors' names and bytes, in name order (values, not just shapes)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_write(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one; `durable`
    also syncs the file and the rename to the disk (so they survive a power loss, not just a
    crash of the process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj) -> None:
    """`obj` as indented JSON (keys sorted) at `path`, written with `atomic_write`."""
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, fix: str = REDO):
    """The JSON at `path` (written by `atomic_write_json`); a file that does not parse (cut
    short or edited) raises `CheckpointError` naming it and what to do (`fix`)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); {fix}") from e


def save(path: str | Path, payload, experiment: str, kind: str, model: str = "", **meta) -> None:
    """Save `payload` (anything `torch.save` takes) with its header; see the module doc."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = {
        "sha256": hashlib.sha256(body).hexdigest(),
        "experiment": experiment,
        "model": model,
        "kind": kind,
        **meta,
    }
    head = json.dumps(header, sort_keys=True).encode()
    atomic_write(path, MAGIC + struct.pack("<Q", len(head)) + head + body)


def read_header(path: str | Path) -> dict:
    """The JSON header of a checkpoint, checksum verified."""
    header, _ = _read(Path(path))
    return header


def load(
    path: str | Path,
    experiment: str,
    kind: str,
    model: str | None = None,
    map_location="cpu",
):
    """The payload of the checkpoint at `path`, after checking its checksum, its experiment
    hash, its kind and (when given) the model signature; `CheckpointError` otherwise."""
    path = Path(path)
    header, body = _read(path)
    for what, want in (("experiment", experiment), ("kind", kind), ("model", model)):
        if want is not None and header.get(what) != want:
            raise CheckpointError(
                f"{path}: belongs to {what} {header.get(what)!r}, expected {want!r}: another "
                f"{what}'s, written by a different run; remove it (or use another --root)"
            )
    return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)


def _read(path: Path) -> tuple[dict, bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from e
    fix = REDO
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise CheckpointError(f"{path}: not a sparse_lottery checkpoint (bad magic); {fix}")
    (size,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start : start + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt header ({e}); {fix}") from e
    body = data[start + size :]
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (corrupt or truncated file); {fix}")
    return header, body
