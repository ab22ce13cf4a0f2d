"""Which layout an upload is in, and how its files become the service's own: images/<id>.<ext>,
masks/<id>_segmentation.png and metadata.csv, which app.services.ingest.validate_layout then checks
as it checks any upload.

- htl: images/, masks/ (PNG), metadata.csv.
- kvasir: Kvasir-SEG as published: images/ and masks/ with the same names, JPEG masks (binarized at
  grey level > 127, as every mask here, and stored as PNG).
- isic: the ISIC challenge downloads as published: a data folder (ISIC-2017_Validation_Data,
  ISIC2018_Task1-2_Training_Input, ...) of ISIC_*.jpg, a ground-truth folder (..._Part1_GroundTruth,
  ISIC2018_Task1_Training_GroundTruth) of ISIC_*_segmentation.png, and CSV files with an image_id (2017)
  or image (2018 on) column as metadata: the clinical metadata, the Part 3 diagnosis ground truth. Their
  rows for images not in the upload are left out (the published CSVs cover the whole split).
- coco: one COCO JSON (pycocotools' format) with its images: each image's annotations, every category,
  rasterized into one mask (app.services.coco); an image the file lists without annotations gets an
  empty mask (COCO annotates every listed image), one it does not list is left out.

The layout is found from the paths alone, and an archive that mixes them, or matches none, is refused
naming what was found."""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from app.core.errors import InvalidInput
from app.services import coco
from app.services.image_files import Limits, decode_fully, image_header
from contract.layout import IMAGE_SUFFIXES, METADATA_FILE, LayoutError, read_mask, read_metadata

LAYOUTS = ("htl", "kvasir", "isic", "coco")
ISIC_FOLDER = re.compile(r"^ISIC[-_ ]?\d{4}.*", re.IGNORECASE)
ISIC_IMAGE = re.compile(r"^ISIC_\d+$")
ISIC_ID_COLUMNS = ("image_id", "image")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _files(raw: Path) -> list[PurePosixPath]:
    return sorted(PurePosixPath(p.relative_to(raw).as_posix()) for p in raw.rglob("*") if p.is_file())


def _in(folder: str, files: list[PurePosixPath], suffixes: tuple[str, ...]) -> list[PurePosixPath]:
    return [f for f in files if len(f.parts) == 2 and f.parts[0] == folder and f.suffix.lower() in suffixes]


def _what_is_there(files: list[PurePosixPath]) -> str:
    tops = sorted({f.parts[0] + ("/" if len(f.parts) > 1 else "") for f in files})
    return ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else "") if tops else "nothing a layout uses"


def detect(raw: Path, files: list[PurePosixPath]) -> tuple[str, list[str], tuple[PurePosixPath, dict] | None]:
    """The layout's name, notes on JSON files that were no COCO file, and the COCO file (its path and
    its JSON, read once) when the layout is coco."""
    jsons = [f for f in files if f.suffix.lower() == ".json" and len(f.parts) <= 2]
    docs = {f: coco.load_json(raw / f) for f in jsons}
    cocos = [f for f, doc in docs.items() if coco.is_coco(doc)]
    broken = [f"{f} is not JSON this service can read" for f, doc in docs.items() if doc is None]
    isic = sorted({f.parts[0] for f in files if len(f.parts) == 2 and ISIC_FOLDER.match(f.parts[0])})
    has_images = bool(_in("images", files, IMAGE_SUFFIXES))
    masks = _in("masks", files, (".png", *JPEG_SUFFIXES))
    found = []
    if cocos:
        found.append(f"a COCO file ({', '.join(map(str, cocos))})")
        if masks:
            found.append("masks/")
    if isic:
        found.append(f"ISIC challenge folders ({', '.join(isic[:3])})")
    if has_images and not cocos:
        found.append("images/")
    if len(found) > 1 or len(cocos) > 1:
        raise InvalidInput(f"the archive mixes layouts: found {' and '.join(found)}; send one dataset in one layout")
    if not found:
        raise InvalidInput(
            "the archive has no images: put them in images/<image_id>.jpg|.jpeg|.png (masks in masks/, metadata.csv), "
            "or send an ISIC challenge download, Kvasir-SEG, or a COCO JSON with its images; found: "
            + _what_is_there(files)
            + (f" ({'; '.join(broken)})" if broken else "")
        )
    if cocos:
        return "coco", broken, (cocos[0], docs[cocos[0]])  # type: ignore[return-value]  # is_coco: a dict
    if isic:
        return "isic", broken, None
    return ("kvasir" if any(m.suffix.lower() in JPEG_SUFFIXES for m in masks) else "htl"), broken, None


def _move(raw: Path, source: PurePosixPath, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise InvalidInput(f"the archive holds two files for {target.parent.name}/{target.name} (one is {source})")
    os.rename(raw / source, target)


def _write_mask(target: Path, mask: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(target, format="PNG")


def _move_images(raw: Path, dest: Path, files: list[PurePosixPath]) -> None:
    for f in _in("images", files, IMAGE_SUFFIXES):
        _move(raw, f, dest / "images" / f.name)


def _move_metadata(raw: Path, dest: Path, files: list[PurePosixPath]) -> None:
    if PurePosixPath(METADATA_FILE) in files:
        _move(raw, PurePosixPath(METADATA_FILE), dest / METADATA_FILE)


def _arrange_htl(raw: Path, dest: Path, files: list[PurePosixPath], limits: Limits) -> list[str]:
    _move_images(raw, dest, files)
    for f in _in("masks", files, (".png",)):
        _move(raw, f, dest / "masks" / f.name)
    _move_metadata(raw, dest, files)
    return []


def _arrange_kvasir(raw: Path, dest: Path, files: list[PurePosixPath], limits: Limits) -> list[str]:
    pngs = _in("masks", files, (".png",))
    if pngs:
        raise InvalidInput(
            f"masks/ holds both JPEG masks (Kvasir-SEG) and PNG ones (e.g. {pngs[0].name}): send one kind"
        )
    _move_images(raw, dest, files)
    for f in _in("masks", files, JPEG_SUFFIXES):
        image_header(raw / f, limits, str(f))  # the pixel limit, before a pixel is decoded
        decode_fully(raw / f, str(f))
        _write_mask(dest / "masks" / f"{f.stem}_segmentation.png", read_mask(raw / f))
        (raw / f).unlink()  # used: converted
    _move_metadata(raw, dest, files)
    return []


def _merge_metadata(raw: Path, dest: Path, csvs: list[PurePosixPath], known: set[str]) -> list[str]:
    """The CSVs with an ISIC id column, joined by image into one metadata.csv; a column two of them
    share is taken from the first."""
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {image_id: {} for image_id in known}
    notes: list[str] = []
    unknown: set[str] = set()
    for f in csvs:
        with (raw / f).open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            header = next(csv.reader([handle.readline(100_000)]), [])
        id_column = next((c for c in ISIC_ID_COLUMNS if c in [h.strip() for h in header]), None)
        if id_column is None:
            notes.append(f"{f} has no image_id or image column: not read as metadata")
            continue
        try:
            found, values = read_metadata(raw / f, known, id_column=id_column, on_unknown=unknown.add)
        except LayoutError as e:
            raise InvalidInput(str(e)) from e
        new = [c for c in found if c not in columns]
        columns += new
        for image_id, row in values.items():
            rows[image_id].update({c: row[c] for c in new})
    if unknown:
        notes.append(f"{len(unknown)} metadata rows name images not in the upload and were left out")
    if columns:
        with (dest / METADATA_FILE).open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["image_id", *columns])
            for image_id in sorted(known):
                writer.writerow([image_id, *(rows[image_id].get(c, "") for c in columns)])
    return notes


def _arrange_isic(raw: Path, dest: Path, files: list[PurePosixPath], limits: Limits) -> list[str]:
    superpixels = 0
    known: set[str] = set()
    for f in files:
        if len(f.parts) != 2 or not ISIC_FOLDER.match(f.parts[0]):
            continue
        truth_folder = "groundtruth" in f.parts[0].lower()
        if truth_folder and f.name.endswith("_segmentation.png"):
            _move(raw, f, dest / "masks" / f.name)
        elif not truth_folder and f.stem.endswith("_superpixels"):
            superpixels += 1
            (raw / f).unlink()  # said in a note of their own
        elif not truth_folder and ISIC_IMAGE.match(f.stem) and f.suffix.lower() in IMAGE_SUFFIXES:
            _move(raw, f, dest / "images" / f.name)
            known.add(f.stem)
    csvs = [f for f in files if f.suffix.lower() == ".csv" and len(f.parts) <= 2]
    notes = _merge_metadata(raw, dest, csvs, known)
    for f in csvs:  # read (or named in a note): not left to count as ignored
        (raw / f).unlink()
    if superpixels:
        notes.append(f"{superpixels} superpixel files (ISIC_*_superpixels.png) are not images and were left out")
    return notes


def _coco_image_file(files: set[PurePosixPath], json_path: PurePosixPath, file_name: PurePosixPath):
    """Where an image the COCO file names lies: beside the file, in images/ there or at the top."""
    folder = json_path.parent
    for candidate in (folder / file_name, folder / "images" / file_name, PurePosixPath("images") / file_name.name):
        if candidate in files:
            return candidate
    return None


def _arrange_coco(
    raw: Path, dest: Path, files: list[PurePosixPath], limits: Limits, *, source: tuple[PurePosixPath, dict]
) -> list[str]:
    json_path, doc = source
    parsed = coco.read_coco(doc, str(json_path))
    (raw / json_path).unlink()  # read: not left to count as ignored
    present = set(files)
    budget = [coco.MAX_POLYGON_NUMBERS]
    unannotated = 0
    for image in parsed.images:
        where = _coco_image_file(present, json_path, image.file_name)
        if where is None:
            raise InvalidInput(f"{json_path} lists {image.file_name}, which is not in the archive")
        width, height, _ = image_header(raw / where, limits, str(where))
        if (width, height) != (image.width, image.height):
            raise InvalidInput(
                f"{json_path} says {image.file_name} is {image.width}x{image.height}, but the image is {width}x{height}"
            )
        _move(raw, where, dest / "images" / where.name)
        unannotated += not image.segmentations
        _write_mask(dest / "masks" / f"{where.stem}_segmentation.png", coco.rasterize(image, str(json_path), budget))
    notes = []
    if unannotated:
        notes.append(f"{unannotated} images have no annotation in {json_path}: their masks are empty (lesion-free)")
    if len(parsed.categories) > 1:
        notes.append(f"the masks join {len(parsed.categories)} categories ({', '.join(parsed.categories[:5])})")
    _move_metadata(raw, dest, files)
    return notes


ARRANGE: dict[str, Callable[[Path, Path, list[PurePosixPath], Limits], list[str]]] = {
    "htl": _arrange_htl,
    "kvasir": _arrange_kvasir,
    "isic": _arrange_isic,
}


def arrange(raw: Path, dest: Path, limits: Limits) -> tuple[str, list[str]]:
    """Detect the layout of what unpack left in raw, put it into dest in the service's own layout, and
    remove raw. Answers the layout's name and notes for the upload's warnings."""
    files = _files(raw)
    layout, notes, coco_file = detect(raw, files)
    if coco_file is not None:
        notes += _arrange_coco(raw, dest, files, limits, source=coco_file)
    else:
        notes += ARRANGE[layout](raw, dest, files, limits)
    left = len(_files(raw))
    shutil.rmtree(raw, ignore_errors=True)
    if left:
        notes.append(f"{left} files are not part of the {layout} layout and were ignored")
    return layout, notes
