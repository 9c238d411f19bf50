"""Saving and loading models without executing code: ``torch.save`` of plain tensors plus a JSON
header (kind, config, format version), read back with ``torch.load(weights_only=True)``, whose
restricted unpickler builds only tensors and primitive containers. A truncated, corrupted or
mismatched file raises ``ModelFileError`` with the reason. (safetensors would do as well, but
rbm_core must import on a machine that has PyTorch alone.)"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1

# kind -> (model class, config class); model modules register themselves on import.
_KINDS: dict[str, tuple[type, Callable[..., Any]]] = {}


class ModelFileError(ValueError):
    """The bytes are not a model file this library can load."""


def register_model(kind: str, model_cls: type, config_cls: Callable[..., Any]) -> None:
    _KINDS[kind] = (model_cls, config_cls)


def model_to_bytes(model: torch.nn.Module, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise ``model`` (its ``kind``, ``config`` and parameters) and optional JSON-able
    ``extra`` metadata."""
    header = {
        "format": "rbm_core",
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "config": asdict(model.config),
        "extra": extra or {},
    }
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    header["sha256"] = _checksum(tensors)
    buffer = io.BytesIO()
    torch.save({"header": json.dumps(header), "tensors": tensors}, buffer)
    return buffer.getvalue()


def _read(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    # torch.save writes a zip archive whose directory sits at the end: a cut file has none.
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(f"model file is truncated or corrupted ({len(data)} bytes): not a complete archive")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise ModelFileError(
                "model file holds objects other than tensors and plain containers; refused without running them"
            ) from exc
        raise ModelFileError(f"model file is truncated or corrupted ({len(data)} bytes): {exc}") from exc
    except Exception as exc:  # arbitrary bytes make the unpickler fail in many ways
        raise ModelFileError(f"model file is truncated or corrupted ({len(data)} bytes): {exc!r}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("header"), str):
        raise ModelFileError("not an rbm_core model file: no header")
    try:
        header = json.loads(payload["header"])
    except ValueError as exc:
        raise ModelFileError(f"model file header is not valid JSON: {exc}") from exc
    if header.get("format") != "rbm_core":
        raise ModelFileError("not an rbm_core model file")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"model file format version {header.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ModelFileError("model file holds no tensor dictionary")
    # The zip container does not check its contents, so a flipped bit in the weights would load
    # silently; the header's checksum of every tensor catches it.
    if "sha256" in header and header["sha256"] != _checksum(tensors):
        raise ModelFileError("model file is corrupted: the tensors do not match the header's sha256 checksum")
    return header, tensors


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_header(data: bytes) -> dict[str, Any]:
    return _read(data)[0]


def model_from_bytes(data: bytes, device: torch.device | str | None = None) -> torch.nn.Module:
    """Rebuild a model from ``model_to_bytes`` output; no code is executed."""
    header, tensors = _read(data)
    _import_model_modules()
    kind = header.get("kind")
    if kind not in _KINDS:
        raise ModelFileError(f"unknown model kind {kind!r} in model file")
    model_cls, config_cls = _KINDS[kind]
    try:
        config = config_cls(**header["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"model file has an invalid config: {exc}") from exc
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    model = model_cls(config, dtype=dtype)
    expected = model.state_dict()
    if set(expected) != set(tensors):
        raise ModelFileError(f"model file tensors {sorted(tensors)} do not match {kind} tensors {sorted(expected)}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ModelFileError(f"tensor {name} has shape {tuple(t.shape)}, config implies {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)
    return model.to(device) if device is not None else model


def save_model(model: torch.nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    Path(path).write_bytes(model_to_bytes(model, extra))


def load_model(path: str | Path, device: torch.device | str | None = None) -> torch.nn.Module:
    return model_from_bytes(Path(path).read_bytes(), device)


def _import_model_modules() -> None:
    import rbm_core.models  # noqa: F401  (registers the built-in kinds)
