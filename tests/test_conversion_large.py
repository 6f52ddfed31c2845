"""Reading heads out of a multi-GB sharded full checkpoint reads only the head tensors.

Builds a ~1.2 GB sharded safetensors full-model checkpoint (4 shards of 300 MB of
dummy base weights; the heads sit in shard 2 next to 300 MB of base weights), drops
it from the page cache, converts it, and measures what the conversion read:

- page-cache residency of the checkpoint files afterwards (mincore), i.e. every
  byte that was brought in from disk, whoever read it;
- /proc/self/io read_bytes of this process during the conversion.

Both must be a small fraction of the checkpoint size.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import time
from pathlib import Path

import pytest
import torch

from conversion.to_vllm import main
from test_conversion import plugin_logits, rand_ref_tensors, ref_logits_reference_keys
from vllm_nfoxhead.core.format import validate_heads_dir

SHARD_BYTES = 300 * 2**20
NUM_SHARDS = 4
H, V = 64, 256
PAGE = os.sysconf("SC_PAGE_SIZE")

_ST_DTYPE = {torch.float32: "F32", torch.float16: "F16"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], dummy_bytes: int) -> None:
    """A safetensors file holding `tensors` plus one big F16 dummy tensor, written in chunks."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header[f"model.dummy.{path.stem}.weight"] = {"dtype": "F16", "shape": [dummy_bytes // 2],
                                                 "data_offsets": [offset, offset + dummy_bytes]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = b"\x00\x3c" * (8 * 2**20)  # fp16 1.0, 16 MiB
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)
        left = dummy_bytes
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_bytes(path: Path) -> int:
    """Bytes of `path` currently in the page cache (mincore over a fresh read-only mapping)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(v & 1 for v in bytes(vec)) * PAGE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def read_bytes_io() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise OSError("no read_bytes in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_sharded_gb_checkpoint_reads_only_heads(tmp_path, capsys):
    t0 = time.time()
    ckpt = tmp_path / "full"
    ckpt.mkdir()
    heads = rand_ref_tensors(5, 1, own_proj=True, prefix="medusa_head.", h=H, v=V)
    weight_map = {}
    for s in range(NUM_SHARDS):
        name = f"model-{s + 1:05d}-of-{NUM_SHARDS:05d}.safetensors"
        own = heads if s == 1 else {}
        write_safetensors(ckpt / name, own, SHARD_BYTES)
        weight_map.update({n: name for n in own})
        weight_map[f"model.dummy.{Path(name).stem}.weight"] = name
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": H, "vocab_size": V,
                                                  "medusa_num_heads": 5, "medusa_num_layers": 1}))
    shards = sorted(ckpt.glob("*.safetensors"))
    total = sum(p.stat().st_size for p in shards)
    assert total >= 2**30
    for p in shards:
        evict(p)
    before_resident = sum(resident_bytes(p) for p in shards)
    t_built = time.time()

    io0 = read_bytes_io()
    rc = main([str(ckpt), "--output", str(tmp_path / "out"), "--quiet"])
    io_read = read_bytes_io() - io0
    assert rc == 0, capsys.readouterr().err
    t_conv = time.time()
    resident = sum(resident_bytes(p) for p in shards) - before_resident
    head_bytes = sum(t.numel() * t.element_size() for t in heads.values())
    print(f"\n1 GB test: checkpoint {total / 2**20:.0f} MiB, head tensors {head_bytes / 2**20:.2f} MiB; "
          f"conversion brought {resident / 2**20:.2f} MiB of it into the page cache "
          f"({100 * resident / total:.3f}%), process read_bytes {io_read / 2**20:.2f} MiB "
          f"({100 * io_read / total:.3f}%); page cache before: {before_resident / 2**20:.2f} MiB; "
          f"build {t_built - t0:.1f}s, convert {t_conv - t_built:.1f}s")
    if before_resident > total // 10:
        pytest.skip("this filesystem ignores page-cache eviction; bytes read cannot be measured")
    assert resident < total * 0.02
    assert io_read < total * 0.02
    # Control: the measurement does see a real read (a whole base shard via get_tensor).
    from safetensors import safe_open

    last = shards[-1]
    with safe_open(str(last), framework="pt") as f:
        f.get_tensor(f"model.dummy.{last.stem}.weight").clone()  # get_tensor may map lazily: touch it
    assert resident_bytes(last) > 0.9 * last.stat().st_size
    x = torch.randn(3, H)
    out = tmp_path / "out"
    assert validate_heads_dir(out).num_heads == 5
    torch.testing.assert_close(plugin_logits(out, x), ref_logits_reference_keys(heads, "medusa_head.", x),
                               rtol=1e-6, atol=1e-6)
