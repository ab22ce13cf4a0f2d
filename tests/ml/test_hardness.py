import numpy as np
import torch

from ml import hardness
from ml.models import build_model
from ml.train import FitConfig, TrainingRecord, fit, prepare_for_device

from .helpers import synthetic_decoded


def test_forgetting_counts_falls_from_learned_between_seen_epochs():
    nan = np.nan
    dice = np.array(
        [
            [0.1, 0.2, 0.1, 0.3, 0.2],  # never learned: most forgotten (Toneva et al.), above any count possible
            [0.2, 0.7, 0.9, 0.95, 0.96],  # learned once, kept
            [0.8, 0.3, 0.9, 0.2, 0.9],  # learned and forgotten twice
            [0.8, nan, 0.3, nan, 0.7],  # unseen epochs are skipped: one event
            [nan, nan, nan, nan, nan],  # never seen: no score
        ]
    )
    events = hardness.forgetting_events(dice)
    assert events[:4].tolist() == [5, 0, 2, 1] and np.isnan(events[4])


def test_dynamic_dice_ranks_late_learners_above_early_ones():
    dice = np.array([[0.9, 0.95, 0.97], [0.1, 0.5, 0.95], [0.0, 0.05, 0.1]])
    s = hardness.dynamic_dice(dice)
    assert s[0] < s[1] < s[2]


def test_el2n_is_read_after_the_first_fifth_of_training():
    assert [hardness.el2n_epoch(e) for e in (1, 5, 6, 10, 50)] == [0, 0, 1, 1, 9]


def test_el2n_is_the_error_l2_norm_per_root_pixel_count():
    """One image, prediction p = 0.5 everywhere on a 32x32 mask that is half lesion: every pixel errs
    by 0.5, so ||p - y||_2 / sqrt(1024) = 0.5."""
    from ml.train import segmentation_objective

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.zeros(x.shape[0], 1, *x.shape[2:]) + self.w

    masks = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    masks[..., :16] = 1
    out = segmentation_objective(Constant(), torch.zeros(1, 3, 32, 32), masks, np.array([0]))
    assert out.error.tolist() == [0.5]


def test_an_image_never_learned_tops_forgetting_loss_dynamic_dice_and_el2n(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=32, hard_fraction=0.0)
    decoded.masks = decoded.masks.copy()
    decoded.masks[5] = 1 - decoded.masks[5]  # its mask contradicts every other image: never learnable
    torch.manual_seed(0)
    model = prepare_for_device(build_model("unet", width=8), "cpu", precision="fp32")
    record = TrainingRecord(32, 8)
    early = {}

    def read_el2n(epoch, current):
        if epoch == hardness.el2n_epoch(8):
            early["el2n"] = hardness.error_norm(current, decoded, list(range(32)))

    fit(
        model,
        decoded,
        list(range(32)),
        FitConfig(epochs=8, batch_size=8, augment=False),
        record=record,
        on_epoch_end=read_el2n,
    )
    scores = hardness.from_dynamics(record.dice)
    loss = hardness.final_loss(model, decoded, list(range(32)))
    assert np.nanmax(record.dice[5]) < hardness.FORGETTING_THRESHOLD
    assert scores["forgetting"][5] == 8 and np.nanmax(np.delete(scores["forgetting"], 5)) < 8
    assert int(np.argmax(loss)) == 5 and int(np.argmax(scores["dynamic_dice"])) == 5
    assert int(np.argmax(early["el2n"])) == 5


def test_mc_dropout_disagreement_is_zero_without_dropout(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=16)
    torch.manual_seed(0)
    model = build_model("unet", width=8)
    fit(model, decoded, list(range(16)), FitConfig(epochs=4, batch_size=8))
    none = hardness.mc_dropout_disagreement(model, decoded, list(range(16)), p=0.0, samples=2)
    some = hardness.mc_dropout_disagreement(model, decoded, list(range(16)), p=0.3, samples=4)
    assert np.all(none == 0) and some.mean() > 0
    # the hooks are gone afterwards: predictions are deterministic again
    again = hardness.mc_dropout_disagreement(model, decoded, list(range(16)), p=0.0, samples=2)
    assert np.all(again == 0)


def test_agreement_of_identical_and_reversed_rankings():
    a = np.arange(20, dtype=float)
    rows = hardness.agreement({"x": a, "y": a.copy(), "z": -a}, top_fraction=0.2)
    by_pair = {(r["a"], r["b"]): r for r in rows}
    assert by_pair[("x", "y")]["spearman"] == 1.0 and by_pair[("x", "y")]["top_overlap"] == 1.0
    assert by_pair[("x", "z")]["spearman"] == -1.0 and by_pair[("x", "z")]["top_overlap"] == 0.0
    assert by_pair[("x", "y")]["top_k"] == 4
