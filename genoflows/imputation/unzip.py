"""Unpack the servers' password-protected result zips, refusing entries that escape the output directory.

IS2 zips with `7z -tzip -p<pw>` (ZipCrypto) or `-mem=AES256` when `aesEncryption` was requested; the
standard library reads ZipCrypto, pyzipper reads WinZip AES.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from genoflows.imputation.errors import BadZipPassword, CorruptDownload, UnsafeArchive

_WINZIP_AES = 99  # compression method id of WinZip AES entries


def _safe_target(dest: Path, name: str, archive: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise UnsafeArchive(
            f"{archive.name}: entry {name!r} would be written outside {dest}; refusing to unpack this zip "
            f"(report it to the server's operators)."
        )
    target = (dest / Path(*pure.parts)).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafeArchive(f"{archive.name}: entry {name!r} escapes {dest}; refusing to unpack this zip")
    return target


def _open_zip(archive: Path, aes: bool) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(archive)
        if aes or any(i.compress_type == _WINZIP_AES for i in zf.infolist()):
            import pyzipper

            zf.close()
            return pyzipper.AESZipFile(archive)
        return zf
    except zipfile.BadZipFile as exc:
        raise CorruptDownload(f"{archive.name}: not a valid zip ({exc}); it is downloaded again") from exc


def safe_extract(archive: Path, dest: Path, password: str | None, *, aes: bool = False) -> list[Path]:
    """Extract every entry of `archive` into `dest` (temp name + rename per file); returns the files."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with _open_zip(archive, aes) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        targets = [(i, _safe_target(dest, i.filename, archive)) for i in infos]  # check all before writing
        if password is not None:
            zf.setpassword(password.encode())
        for info, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            try:
                with zf.open(info) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except RuntimeError as exc:  # zipfile: "Bad password for file" / "File ... is encrypted"
                part.unlink(missing_ok=True)
                msg = str(exc).lower()
                if "password" in msg or "encrypted" in msg:
                    raise BadZipPassword(
                        f"{archive.name}: the results password does not open it (or none was given); check the "
                        f"Secret block holding the password this job was submitted with."
                    ) from None
                raise CorruptDownload(f"{archive.name}: {exc}") from None
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                part.unlink(missing_ok=True)
                # A wrong ZipCrypto password passes the 1-byte check 1 time in 256 and then fails the CRC.
                raise CorruptDownload(f"{archive.name}: entry {info.filename} is corrupt ({exc})") from None
            part.replace(target)
            written.append(target)
    return written
