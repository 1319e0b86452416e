"""Writing safetensors files as the safetensors library does, for the scripts that build fixtures and organisms
without it (Debian has no python3-safetensors): an 8-byte little-endian header length, a compact JSON header
(metadata first, then tensors sorted by dtype size, largest first, then name), padded with spaces to 8 bytes,
then each tensor's little-endian, C-contiguous data."""
import json

import torch

DTYPES = {torch.float32: ("F32", 4), torch.float16: ("F16", 2), torch.bfloat16: ("BF16", 2)}


def tensor_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.numpy().astype("<f2").tobytes()
    return t.to(torch.float32).numpy().astype("<f4").tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes `tensors` (name -> float32/float16/bfloat16 tensor); returns the size of the data section."""
    names = sorted(tensors, key=lambda n: (-DTYPES[tensors[n].dtype][1], n))
    header = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    blobs = []
    for n in names:
        data = tensor_bytes(tensors[n])
        header[n] = {"dtype": DTYPES[tensors[n].dtype][0], "shape": list(tensors[n].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    js = json.dumps(header, separators=(",", ":")).encode("utf-8")
    js += b" " * ((8 - len(js) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(js).to_bytes(8, "little"))
        f.write(js)
        for b in blobs:
            f.write(b)
    return offset
