"""The ``.safetensors`` file format in numpy alone (no torch, no ``safetensors`` package).

    tensors = read_safetensors("DNA_bert_6/model.safetensors")   # name -> np.ndarray
    write_safetensors("out/model.safetensors", tensors)

Format: an unsigned little-endian 64-bit header size n, n bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then
the raw little-endian buffers (offsets relative to the end of the header). DNABERT's
weights therefore load with the core install.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from genemask_jax.hf.errors import HFImportError

PathLike = str | os.PathLike

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "BF16": np.uint16,  # Widened to float32 below (numpy has no bfloat16).
}
_NP_TO_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
             np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
             np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
             np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into numpy arrays, without torch or ``safetensors``.

  Format: an unsigned little-endian 64-bit header size n, n bytes of JSON
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
  then the raw little-endian buffers (offsets relative to the end of the header).

  Returns:
    name -> array with the stored shape; BF16 tensors come back as float32, every other
    dtype as stored.

  Raises:
    HFImportError: a truncated file, a bad header or an unsupported dtype (naming the file
      and the tensor).
  """
  path = pathlib.Path(path)
  size = path.stat().st_size
  if size < 8:
    raise HFImportError(f"{path}: {size} bytes; not a safetensors file")
  data = np.memmap(path, dtype=np.uint8, mode="r")  # Only the copies below are resident.
  (n,) = struct.unpack("<Q", data[:8].tobytes())
  if n > size - 8:
    raise HFImportError(f"{path}: header size {n} exceeds the file ({size} bytes); "
                        "not a safetensors file or truncated")
  try:
    header = json.loads(data[8:8 + n].tobytes())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFImportError(f"{path}: safetensors header is not JSON ({e})") from e
  body = data[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _ST_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise HFImportError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                          f"expected one of {sorted(_ST_DTYPES)}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if end > len(body) or end - begin != count * np.dtype(dtype).itemsize:
      raise HFImportError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has "
                          f"data_offsets {[begin, end]} that do not fit the file")
    arr = body[begin:end].view(np.dtype(dtype).newbyteorder("<"))
    if info["dtype"] == "BF16":
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    out[name] = np.array(arr, dtype=arr.dtype.newbyteorder("=")).reshape(shape)
  return out


def write_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes numpy arrays as a ``.safetensors`` file (``{"format": "pt"}`` metadata).

  Tensors are laid out in name order; the header is space-padded to a multiple of 8 bytes
  as the reference writer does.
  """
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  buffers, offset = [], 0
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NP_TO_ST:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
    raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    buffers.append(raw)
    offset += len(raw)
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for raw in buffers:
      f.write(raw)
