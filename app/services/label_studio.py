"""Label Studio tasks: the flagged masks (or the annotation queue) in the JSON Label Studio imports.

Each task's `data.image` is a URL of the original image; masks travel as brush regions in Label
Studio's RLE, the rle-pack format of thi.ng/umbrella (https://github.com/thi-ng/umbrella,
packages/rle-pack) over the mask's RGBA pixels, row-major: a 32-bit value count, a 5-bit word size
less one, four 4-bit run-length field widths less one, then per run a repeat flag, a 2-bit width
index, the run length less one and the 8-bit value. Label Studio's own Python reader is
label_studio_sdk.converter.brush.decode_rle; the package is not a dependency here (it pulls OpenCV,
pandas and NLTK), so the encoder is ours and the tests decode by the format's definition.

The labelling config the tasks fit (README, "Label Studio"):

    <View>
      <Image name="image" value="$image"/>
      <BrushLabels name="mask" toName="image"><Label value="Lesion"/></BrushLabels>
    </View>"""

from __future__ import annotations

import numpy as np

RUN_BITS = (3, 4, 8, 16)  # the four run-length field widths, as Label Studio's own encoder writes them
WORD_BITS = 8
FROM_NAME, TO_NAME, LABEL = "mask", "image", "Lesion"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="mask" toName="image"><Label value="Lesion"/></BrushLabels></View>'
)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and values of the runs of equal values in a 1-d array."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), values
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), len(values) - 1)
    return np.diff(np.append(-1, ends)), values[ends]


def encode_rle(values: np.ndarray) -> list[int]:
    """uint8 values in rle-pack bytes, every run written as a repeat."""
    if len(values) >= 2**32:
        raise ValueError("rle-pack counts values in 32 bits")
    bits = [f"{len(values):032b}", f"{WORD_BITS - 1:05b}", *(f"{b - 1:04b}" for b in RUN_BITS)]
    longest = 2 ** RUN_BITS[-1]
    for length, value in zip(*_runs(np.asarray(values, dtype=np.uint8))):
        left = int(length)
        while left:
            chunk = min(left, longest)
            index = next(k for k, width in enumerate(RUN_BITS) if chunk <= 2**width)
            bits.append(f"1{index:02b}{chunk - 1:0{RUN_BITS[index]}b}{int(value):08b}")
            left -= chunk
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


def brush(mask: np.ndarray, region_id: str) -> dict:
    """One brush region of the mask (H, W), boolean, in a Label Studio result."""
    height, width = mask.shape
    rgba = np.repeat(np.where(mask, 255, 0).astype(np.uint8).ravel(), 4)  # every channel the mask, as Label Studio
    return {
        "id": region_id,
        "type": "brushlabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_rle(rgba), "brushlabels": [LABEL]},
    }


def task(
    image_url: str,
    data: dict,
    *,
    mask: np.ndarray | None,
    prediction: np.ndarray | None,
    model_version: str,
    score: float | None,
) -> dict:
    """A task: the image, the current mask as an annotation to correct, the model's mask as a prediction."""
    out: dict = {"data": {"image": image_url, **data}}
    if mask is not None:
        out["annotations"] = [{"result": [brush(mask, "mask")], "ground_truth": False}]
    if prediction is not None:
        entry: dict = {"model_version": model_version, "result": [brush(prediction, "prediction")]}
        if score is not None:
            entry["score"] = float(score)
        out["predictions"] = [entry]
    return out
