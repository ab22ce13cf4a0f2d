import numpy as np
import pytest
from PIL import Image

from contract.layout import read_mask
from ml.png import mask_png, write_mask_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (150, 200)])
def test_mask_png_reads_back_as_0_and_255_greyscale(tmp_path, shape):
    mask = np.random.default_rng(0).random(shape) > 0.6
    write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "L" and img.size == (shape[1], shape[0])
        values = np.asarray(img)
    assert set(np.unique(values)) <= {0, 255}
    assert np.array_equal(values == 255, mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_mask_png_refuses_a_stack():
    with pytest.raises(ValueError, match="2-D"):
        mask_png(np.zeros((2, 4, 4), bool))
