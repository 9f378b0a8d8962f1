"""Write a tiny but valid SoundFont 2 file for tests (layout from the SoundFont 2.01 spec):
a looped sine instrument as preset (bank 0, program 0) and a decaying-noise instrument as the
percussion kit (bank 128, program 0)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

GEN_INSTRUMENT, GEN_SAMPLE_MODES, GEN_SAMPLE_ID = 41, 54, 53


def _chunk(tag: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return tag + struct.pack("<I", len(data)) + data + pad


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def _name(text: str) -> bytes:
    return text.encode()[:19].ljust(20, b"\0")


def write_tiny_sf2(path: Path, rate: int = 22050) -> Path:
    """Write the file and return ``path``."""
    t = np.arange(rate // 2) / rate
    sine = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    rng = np.random.default_rng(0)
    noise = 0.5 * rng.standard_normal(len(t)) * np.exp(-t * 12)
    pcm = b""
    headers = []
    start = 0
    for name, wave, pitch in (("sine", sine, 69), ("noise", noise, 60)):
        data = (wave * 32767).astype("<i2").tobytes() + b"\0\0" * 46
        end = start + len(wave)
        headers.append(
            _name(name)
            + struct.pack("<IIIIIBbHH", start, end, start + 100, end - 100, rate, pitch, 0, 0, 1)
        )
        pcm += data
        start = end + 46
    shdr = b"".join(headers) + _name("EOS") + bytes(26)
    # instruments: bag 0 -> sine (looped), bag 1 -> noise
    inst = _name("sine") + struct.pack("<H", 0) + _name("noise") + struct.pack("<H", 1)
    inst += _name("EOI") + struct.pack("<H", 2)
    ibag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 2, 0) + struct.pack("<HH", 3, 0)
    igen = (
        struct.pack("<HH", GEN_SAMPLE_MODES, 1)
        + struct.pack("<HH", GEN_SAMPLE_ID, 0)
        + struct.pack("<HH", GEN_SAMPLE_ID, 1)
        + bytes(4)
    )
    phdr = b""
    for i, (name, bank) in enumerate((("Tone", 0), ("Kit", 128))):
        phdr += _name(name) + struct.pack("<HHHIII", 0, bank, i, 0, 0, 0)
    phdr += _name("EOP") + struct.pack("<HHHIII", 0, 0, 2, 0, 0, 0)
    pbag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0) + struct.pack("<HH", 2, 0)
    pgen = struct.pack("<HH", GEN_INSTRUMENT, 0) + struct.pack("<HH", GEN_INSTRUMENT, 1) + bytes(4)
    body = b"sfbk" + _list(
        b"INFO",
        _chunk(b"ifil", struct.pack("<HH", 2, 1)),
        _chunk(b"isng", b"EMU8000\0"),
        _chunk(b"INAM", b"tiny test\0"),
    )
    body += _list(b"sdta", _chunk(b"smpl", pcm))
    body += _list(
        b"pdta",
        _chunk(b"phdr", phdr),
        _chunk(b"pbag", pbag),
        _chunk(b"pmod", bytes(10)),
        _chunk(b"pgen", pgen),
        _chunk(b"inst", inst),
        _chunk(b"ibag", ibag),
        _chunk(b"imod", bytes(10)),
        _chunk(b"igen", igen),
        _chunk(b"shdr", shdr),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path
