"""Archive validation and unpacking: the only code that touches uploaded bytes.

Nothing in an archive is trusted: member paths (absolute, '..', backslashes), member types (links,
devices), declared sizes (bytes are counted while extracting), compression ratios, file counts and
image dimensions (read from the header and checked before any pixel is decoded). A rejected archive
raises an ApiError (422, 413 or 415) naming the problem, and its staging folder is removed."""

from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from app.core.errors import InvalidInput, TooLarge, UnsupportedMediaType
from app.services.image_files import Limits, decode_fully, image_header
from app.services.layouts import arrange
from contract.layout import IMAGE_SUFFIXES, METADATA_FILE, LayoutError, mask_image_id, read_mask, read_metadata

CHUNK = 1024 * 1024
MAX_ID_CHARS = 128  # so every file name derived from an id (masks/<id>_segmentation.png, ...) fits the filesystem
SAFE_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_CHARS - 1}}}$")
MAX_NAME_BYTES = 200  # a member's file name; filesystems stop at 255
MAX_EMPTY_MASK_WARNINGS = 20
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
RATIO_GRACE_BYTES = 1024 * 1024  # tiny archives compress well; judge the ratio past this much output


@dataclass
class ImageInfo:
    image_id: str
    filename: str
    mask_filename: str | None
    width: int
    height: int
    attributes: dict[str, str]


@dataclass
class IngestResult:
    images: list[ImageInfo]
    columns: list[str]
    warnings: list[str] = field(default_factory=list)
    size_bytes: int = 0
    layout: str = "htl"  # app.services.layouts.LAYOUTS

    @property
    def n_masks(self) -> int:
        return sum(i.mask_filename is not None for i in self.images)


def _clean_member_path(name: str) -> PurePosixPath:
    if "\\" in name or "\0" in name:
        raise InvalidInput(f"archive member {name!r} has a backslash or NUL in its path")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise InvalidInput(f"archive member {name!r} has an absolute path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"archive member {name!r} escapes the archive with '..'")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _CountingReader:
    """Decompressed bytes of a gzip stream, refused once the total or the ratio is over the limit."""

    def __init__(self, raw: BinaryIO, compressed_size: int, limits: Limits):
        self.inner = gzip.GzipFile(fileobj=raw, mode="rb")
        self.compressed_size = max(compressed_size, 1)
        self.limits = limits
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.total += len(data)
        if self.total > self.limits.max_uncompressed_bytes:
            raise TooLarge(f"archive unpacks to more than {self.limits.max_uncompressed_bytes} bytes")
        if self.total > RATIO_GRACE_BYTES and self.total / self.compressed_size > self.limits.max_compression_ratio:
            raise TooLarge(
                f"archive compression ratio is over {self.limits.max_compression_ratio:g}: refused as a possible decompression bomb"
            )
        return data


@dataclass
class _Member:
    path: PurePosixPath
    size: int
    open: Callable[[], IO[bytes]]


def _zip_members(archive: Path, limits: Limits) -> Iterator[_Member]:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise InvalidInput(f"the zip archive is corrupt: {e}") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise TooLarge(f"archive holds {len(infos)} entries, over the limit of {limits.max_files}")
        declared = 0
        for info in infos:
            _clean_member_path(info.filename)  # refuses unsafe paths before anything is written
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise InvalidInput(f"archive member {info.filename!r} is a link; links are not accepted")
            if mode not in (0, 0o100000, 0o040000):
                raise InvalidInput(f"archive member {info.filename!r} is not a regular file")
            if info.flag_bits & 0x1:
                raise InvalidInput(f"archive member {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InvalidInput(
                    f"archive member {info.filename!r} uses compression method {info.compress_type} (deflate64, "
                    "bzip2, lzma, ...), which this service does not read: use plain deflate (zip) or tar.gz"
                )
            declared += info.file_size
            if (
                info.file_size > RATIO_GRACE_BYTES
                and info.file_size / max(info.compress_size, 1) > limits.max_compression_ratio
            ):
                raise TooLarge(
                    f"archive member {info.filename!r} has a compression ratio over {limits.max_compression_ratio:g}: "
                    "refused as a possible decompression bomb"
                )
        if declared > limits.max_uncompressed_bytes:
            raise TooLarge(f"archive unpacks to {declared} bytes, over the limit of {limits.max_uncompressed_bytes}")
        # the whole archive's ratio too (many members each under the grace size add up); a member
        # never writes more than it declares (_copy_counted), so the declared total bounds the disk
        if declared > RATIO_GRACE_BYTES and declared / max(archive.stat().st_size, 1) > limits.max_compression_ratio:
            raise TooLarge(
                f"the archive unpacks to {declared} bytes from {archive.stat().st_size}: a compression ratio over "
                f"{limits.max_compression_ratio:g}, refused as a possible decompression bomb"
            )
        for info in infos:
            if info.is_dir():
                continue
            yield _Member(_clean_member_path(info.filename), info.file_size, functools.partial(zf.open, info))


def _regular_file(tf: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(info)
    if f is None:  # only a regular file has contents; _tar_members lets no other kind through
        raise InvalidInput(f"archive member {info.name!r} is not a regular file")
    return f


def _tar_members(archive: Path, limits: Limits) -> Iterator[_Member]:
    with archive.open("rb") as raw:
        reader = _CountingReader(raw, archive.stat().st_size, limits)
        try:
            tf = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]  # a stream tar needs only read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InvalidInput(f"the tar.gz archive is corrupt: {e}") from e
        count = 0
        try:
            for info in tf:
                count += 1
                if count > limits.max_files:
                    raise TooLarge(f"archive holds more than {limits.max_files} entries")
                path = _clean_member_path(info.name)
                if info.issym() or info.islnk():
                    raise InvalidInput(f"archive member {info.name!r} is a link; links are not accepted")
                if info.isdir():
                    continue
                if not info.isreg():
                    raise InvalidInput(f"archive member {info.name!r} is not a regular file")
                yield _Member(path, info.size, functools.partial(_regular_file, tf, info))
            # the tar's end marker comes before the gzip trailer: read to the end, so the gzip CRC
            # and length are checked and a changed byte anywhere is caught
            while reader.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise InvalidInput(f"the tar.gz archive is corrupt: {e}") from e


def _archive_kind(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    raise UnsupportedMediaType("the upload is neither a zip nor a tar.gz archive")


def _copy_counted(src: IO[bytes], dst: Path, declared: int, budget: list[int], name: str) -> int:
    written = 0
    with dst.open("wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > declared:
                raise InvalidInput(f"archive member {name!r} holds more bytes than its header declares")
            if budget[0] < 0:
                raise TooLarge("archive unpacks to more bytes than the limit")
            out.write(chunk)
    return written


RAW = "raw"  # where unpack puts what it extracts, before app.services.layouts arranges it
RELEVANT_SUFFIXES = (*IMAGE_SUFFIXES, ".csv", ".json")
MAX_DEPTH = 6  # folders deep, inside the archive


def _relevant(path: PurePosixPath) -> bool:
    """A member some layout could use (images, masks, CSV metadata, a COCO JSON), else ignored."""
    parts = path.parts
    if parts and len(parts[-1].encode()) > MAX_NAME_BYTES:
        raise InvalidInput(f"archive member {str(path)[:80]!r}...: its file name is over {MAX_NAME_BYTES} bytes")
    if not parts or parts[-1] in IGNORED_NAMES or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return False
    return len(parts) <= MAX_DEPTH and parts[-1].lower().endswith(RELEVANT_SUFFIXES)


def _without_wrapping_folder(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """An archive of one folder ("mydata/images/...") is read as that folder's contents; one of
    images/ alone is not unwrapped (its files would lose their folder)."""
    if paths and all(len(p.parts) > 1 for p in paths) and len({p.parts[0] for p in paths}) == 1:
        inner = [PurePosixPath(*p.parts[1:]) for p in paths]
        if any(len(p.parts) > 1 for p in inner):
            return inner
    return paths


def unpack(archive: Path, dest: Path, limits: Limits) -> list[str]:
    """Extract the members a layout could use (images, masks, CSV, JSON) into dest/raw, under their
    paths in the archive less a wrapping folder. Returns warnings about ignored members."""
    kind = _archive_kind(archive)
    members = _zip_members(archive, limits) if kind == "zip" else _tar_members(archive, limits)
    budget = [limits.max_uncompressed_bytes]
    ignored: list[str] = []
    extracted: list[tuple[Path, PurePosixPath]] = []
    incoming = dest / ".incoming"  # named by position until every path is known (a tar is read once)
    incoming.mkdir(parents=True, exist_ok=True)
    for k, member in enumerate(members):
        if not _relevant(member.path):
            ignored.append(str(member.path))
            continue
        out = incoming / str(k)
        try:
            with member.open() as src:
                _copy_counted(src, out, member.size, budget, str(member.path))
        except NotImplementedError as e:  # zipfile: deflate64, bzip2 variants, ... it cannot read
            raise InvalidInput(
                f"archive member {str(member.path)!r} uses a compression method this service does not read ({e}); "
                "use plain deflate (zip) or tar.gz"
            ) from e
        except (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError) as e:
            raise InvalidInput(f"archive member {str(member.path)!r} is corrupt: {e}") from e
        extracted.append((out, member.path))
    relatives = _without_wrapping_folder([path for _, path in extracted])
    seen: set[PurePosixPath] = set()
    for (out, _), relative in zip(extracted, relatives):
        if relative in seen:
            raise InvalidInput(f"archive holds {relative} twice")
        seen.add(relative)
        target = dest / RAW / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(out, target)
        except OSError as e:  # a file and a folder of one name
            raise InvalidInput(f"archive member {relative} clashes with another member's path") from e
    incoming.rmdir()
    warnings = []
    if ignored:
        warnings.append(
            f"{len(ignored)} archive members are not part of the layout and were ignored (e.g. {ignored[0]})"
        )
    return warnings


def _images_by_id(image_dir: Path) -> dict[str, Path]:
    """images/<image_id>.<ext>, each id safe and unique."""
    files = sorted(image_dir.iterdir()) if image_dir.is_dir() else []
    if not files:
        raise InvalidInput("the archive has no images: put them in images/<image_id>.jpg|.jpeg|.png")
    by_id: dict[str, Path] = {}
    for path in files:
        image_id = path.stem
        if not SAFE_ID.match(image_id):
            raise InvalidInput(
                f"images/{path.name[:80]}: an image id is 1 to {MAX_ID_CHARS} letters, digits, '.', '_' and '-'"
            )
        if image_id in by_id:
            raise InvalidInput(f"duplicate image id {image_id!r}: images/{by_id[image_id].name} and images/{path.name}")
        by_id[image_id] = path
    return by_id


def _masks_by_image(mask_dir: Path, image_ids: set[str], warnings: list[str]) -> dict[str, Path]:
    """masks/ by the image each belongs to, at most one each; a mask of no image is dropped, with a warning."""
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.iterdir()) if mask_dir.is_dir() else []:
        owner = mask_image_id(path.name)
        if owner is None or owner not in image_ids:
            path.unlink()
            warnings.append(f"masks/{path.name} matches no image and was dropped")
            continue
        if owner in masks:
            raise InvalidInput(f"image {owner!r} has two masks: masks/{masks[owner].name} and masks/{path.name}")
        masks[owner] = path
    return masks


def _checked_image(path: Path, mask: Path | None, limits: Limits) -> tuple[int, int, bool]:
    """An image (and its mask) decodes within the limits, the mask at the image's size: (width, height,
    whether the mask holds no lesion pixel)."""
    width, height, fmt = image_header(path, limits, f"images/{path.name}")
    if fmt not in ("JPEG", "PNG"):
        raise InvalidInput(f"images/{path.name} is {fmt}, not JPEG or PNG")
    decode_fully(path, f"images/{path.name}")
    if mask is None:
        return width, height, False
    mw, mh, _ = image_header(mask, limits, f"masks/{mask.name}")
    if (mw, mh) != (width, height):
        raise InvalidInput(f"masks/{mask.name} is {mw}x{mh} but its image is {width}x{height}")
    decode_fully(mask, f"masks/{mask.name}")
    return width, height, not read_mask(mask).any()


def _coverage_warnings(images: list[ImageInfo], metadata: dict, empty_masks: list[str]) -> list[str]:
    """Empty masks (the first few by name), images without a mask, images without a metadata row."""
    warnings = [
        f"masks/{name} holds no lesion pixel (grey level > 127, a 0/1 label, or opaque alpha): its image trains as lesion-free"
        for name in empty_masks[:MAX_EMPTY_MASK_WARNINGS]
    ]
    if len(empty_masks) > MAX_EMPTY_MASK_WARNINGS:
        warnings.append(f"... and {len(empty_masks) - MAX_EMPTY_MASK_WARNINGS} more masks hold no lesion pixel")
    n_without = sum(i.mask_filename is None for i in images)
    if n_without:
        warnings.append(f"{n_without} of {len(images)} images have no mask")
    if metadata:
        missing = len(images) - len(metadata)
        if missing:
            warnings.append(f"{missing} images have no row in metadata.csv")
    return warnings


def validate_layout(root: Path, limits: Limits) -> IngestResult:
    """Check the unpacked folder: images decode within the pixel limit, masks match their image's size,
    ids are unique and safe, metadata.csv names only known images."""
    warnings: list[str] = []
    by_id = _images_by_id(root / "images")
    masks = _masks_by_image(root / "masks", set(by_id), warnings)
    columns: list[str] = []
    metadata: dict[str, dict[str, str]] = {}
    if (root / METADATA_FILE).is_file():
        try:
            columns, metadata = read_metadata(root / METADATA_FILE, known_ids=set(by_id))
        except LayoutError as e:
            raise InvalidInput(str(e)) from e
    images = []
    empty_masks: list[str] = []
    for image_id, path in by_id.items():
        mask = masks.get(image_id)
        width, height, empty = _checked_image(path, mask, limits)
        if mask is not None and empty:
            empty_masks.append(mask.name)
        images.append(
            ImageInfo(image_id, path.name, mask.name if mask else None, width, height, metadata.get(image_id, {}))
        )
    warnings += _coverage_warnings(images, metadata, empty_masks)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return IngestResult(images=images, columns=columns, warnings=warnings, size_bytes=size)


def ingest_archive(archive: Path, staging: Path, limits: Limits) -> IngestResult:
    """Unpack and validate into staging (which must not exist). On error staging is removed."""
    staging.mkdir(parents=True)
    try:
        warnings = unpack(archive, staging, limits)
        layout, notes = arrange(staging / RAW, staging, limits)
        result = validate_layout(staging, limits)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.warnings = warnings + notes + result.warnings
    result.layout = layout
    return result
