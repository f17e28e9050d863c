"""Write password-protected zips the way `7z a -tzip -p<pw>` does (traditional PKWARE "ZipCrypto").

The standard library reads such zips but cannot write them; the local Cloudgene test server needs to, so
this small writer follows PKWARE APPNOTE section 6.1. Test support only: ZipCrypto is weak encryption.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0xEDB88320 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


class _Keys:
    def __init__(self, password: bytes):
        self.k0, self.k1, self.k2 = 0x12345678, 0x23456789, 0x34567890
        for b in password:
            self.update(b)

    def update(self, b: int) -> None:
        self.k0 = _CRC_TABLE[(self.k0 ^ b) & 0xFF] ^ (self.k0 >> 8)
        self.k1 = ((self.k1 + (self.k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        self.k2 = _CRC_TABLE[(self.k2 ^ (self.k1 >> 24)) & 0xFF] ^ (self.k2 >> 8)

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray(len(data))
        for i, b in enumerate(data):
            t = (self.k2 | 2) & 0xFFFF
            out[i] = b ^ (((t * (t ^ 1)) >> 8) & 0xFF)
            self.update(b)
        return bytes(out)


def write_zipcrypto(dest: Path, entries: dict[str, bytes], password: str) -> None:
    """Write `entries` (archive name -> content), deflated and ZipCrypto-encrypted with `password`."""
    t = time.localtime()
    dostime = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    dosdate = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    body, central = bytearray(), bytearray()
    for name, data in entries.items():
        crc = zlib.crc32(data)
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = comp.compress(data) + comp.flush()
        keys = _Keys(password.encode())
        header = os.urandom(11) + bytes([crc >> 24])
        payload = keys.encrypt(header + deflated)
        fname = name.encode()
        offset = len(body)
        body += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            1,
            8,
            dostime,
            dosdate,
            crc,
            len(payload),
            len(data),
            len(fname),
            0,
        )
        body += fname + payload
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            1,
            8,
            dostime,
            dosdate,
            crc,
            len(payload),
            len(data),
            len(fname),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += fname
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    Path(dest).write_bytes(bytes(body + central + end))


def write_aes(dest: Path, entries: dict[str, bytes], password: str) -> None:
    """WinZip AES-256 (what `7z -mem=AES256` writes), via pyzipper."""
    import pyzipper

    with pyzipper.AESZipFile(dest, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(password.encode())
        for name, data in entries.items():
            zf.writestr(name, data)
