"""A (nested) state dict as the flat dict DCP saves: nested keys joined by ``/``, plain values
(int, float, bool, str, None, lists/tuples, dicts, bytes) stored as small uint8 tensors of
JSON or raw bytes — never pickles, so loading them never unpickles anything."""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

import torch

from workloads.gpt.checkpoint.errors import CheckpointError

KEY_SEP = "/"  # joins nested dict keys (keys themselves may contain dots)
_PLAIN_JSON, _PLAIN_BYTES = ord("J"), ord("B")


def flatten(state: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state key {k!r} under {prefix or '<root>'} is not a string")
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if not v:
                yield key, {}
            else:
                yield from flatten(v, key + KEY_SEP)
        else:
            yield key, v


def encode_plain(key: str, value: Any) -> torch.Tensor:
    if isinstance(value, (bytes, bytearray, memoryview)):
        payload = bytes([_PLAIN_BYTES]) + bytes(value)
    else:
        try:
            payload = bytes([_PLAIN_JSON]) + json.dumps(value, allow_nan=True).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"state[{key!r}]: {type(value).__name__} cannot be checkpointed ({e})") from None
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def decode_plain(key: str, t: torch.Tensor) -> Any:
    raw = bytes(t.cpu().numpy().tobytes())
    if not raw:
        raise CheckpointError(f"state[{key!r}]: empty plain-value record")
    if raw[0] == _PLAIN_BYTES:
        return raw[1:]
    if raw[0] == _PLAIN_JSON:
        return json.loads(raw[1:].decode("utf-8"))
    raise CheckpointError(f"state[{key!r}]: unknown plain-value encoding {raw[0]}")


def to_dcp(state: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Flat DCP dict (tensors as given, plain values encoded) and the set of plain keys."""
    flat: dict[str, Any] = {}
    plain: set[str] = set()
    for key, v in flatten(state):
        if isinstance(v, torch.Tensor):
            flat[key] = v
        else:
            flat[key] = encode_plain(key, v)
            plain.add(key)
    return flat, plain


def set_nested(state: dict[str, Any], key: str, value: Any) -> None:
    """Store ``value`` under the flat ``key`` in the caller's own nested structure (keys may
    contain the separator only at nesting points)."""
    node: Any = state
    parts = key.split(KEY_SEP)
    i = 0
    while i < len(parts) - 1:
        # find the longest prefix of the remaining parts that is a key of node
        for j in range(len(parts) - 1, i, -1):
            candidate = KEY_SEP.join(parts[i:j])
            if isinstance(node, Mapping) and candidate in node and isinstance(node[candidate], Mapping):
                node = node[candidate]
                i = j
                break
        else:
            break
    node[KEY_SEP.join(parts[i:])] = value
