import numpy as np
import torch

from ml.models import build_model
from ml.scoring import binary_dice
from ml.train import FitConfig, _draws, fit, per_sample_loss, predict_logits, prepare_for_device, segmentation_objective

from .helpers import synthetic_decoded


def _trained(decoded, seed=0, epochs=4, **kwargs):
    torch.manual_seed(seed)
    model = prepare_for_device(build_model("unet", width=8), "cpu", precision="fp32")
    losses = fit(model, decoded, list(range(len(decoded))), FitConfig(epochs=epochs, batch_size=8, seed=seed), **kwargs)
    return model, losses


def test_training_learns_the_lesions(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=64, hard_fraction=0.0)
    model, losses = _trained(decoded, epochs=6)
    assert losses[-1] < losses[0] - 0.2
    images, masks = decoded.batch(range(len(decoded)))
    dice = binary_dice(predict_logits(model, images) > 0, masks.bool())
    assert dice.mean() > 0.85, dice.mean()


def test_training_is_deterministic_for_a_seed(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=32)
    a, _ = _trained(decoded, seed=3, epochs=2)
    b, _ = _trained(decoded, seed=3, epochs=2)
    c, _ = _trained(decoded, seed=4, epochs=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_per_sample_loss_is_lower_for_the_right_mask():
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    right = (masks * 2 - 1) * 6
    loss = per_sample_loss(torch.stack([right[0], -right[1]]), masks)
    assert loss.shape == (2,) and loss[0] < 0.1 < 1.0 < loss[1]


def test_oversampling_draws_chosen_samples_factor_times_as_often():
    weights = np.ones(100)
    weights[:10] = 3.0  # 10 chosen, factor 3: expected share 30 / 120
    g = torch.Generator().manual_seed(0)
    picks = torch.cat(list(_draws(100, 500, 16, weights, g)))
    assert len(picks) == 500 * 16
    share = (picks < 10).float().mean().item()
    assert abs(share - 0.25) < 0.02
    uniform = torch.cat(list(_draws(100, 6, 16, None, torch.Generator().manual_seed(0))))
    assert len(set(uniform.tolist())) == 96  # a permutation: no repeats within an epoch


def test_zero_loss_weight_removes_a_sample_from_training(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=16)
    weights = np.ones(16)
    weights[8:] = 0.0
    a, _ = _trained(decoded, epochs=1, loss_weights=weights)
    # the same run with the masks of the zero-weighted images scrambled ends identically
    decoded.masks = decoded.masks.copy()
    decoded.masks[8:] = 1 - decoded.masks[8:]
    b, _ = _trained(decoded, epochs=1, loss_weights=weights)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_fit_draws_the_attended_images_as_often_as_their_weights_say(tmp_path):
    """Counted inside fit, at the objective every training step calls: 10 of 100 images at factor
    3 get 30/120 of the draws; without weights each image is drawn once per epoch."""
    _, decoded = synthetic_decoded(tmp_path, n=100)
    drawn = []

    def counting(model, x, masks, indices):
        drawn.extend(indices.tolist())
        return segmentation_objective(model, x, masks, indices)

    weights = np.ones(100)
    weights[:10] = 3.0
    torch.manual_seed(0)
    model = prepare_for_device(build_model("unet", width=4), "cpu", precision="fp32")
    fit(
        model,
        decoded,
        list(range(100)),
        FitConfig(epochs=40, batch_size=16, augment=False),
        sampling_weights=weights,
        objective=counting,
    )
    share = np.isin(drawn, range(10)).mean()
    assert len(drawn) == 40 * 6 * 16 and abs(share - 0.25) < 0.03, share
    drawn.clear()
    fit(model, decoded, list(range(100)), FitConfig(epochs=3, batch_size=16, augment=False), objective=counting)
    counts = np.bincount(drawn, minlength=100)
    assert len(drawn) == 3 * 96 and counts.max() <= 3 and abs(np.isin(drawn, range(10)).mean() - 0.10) < 0.03


def test_a_run_of_five_steps_trains(tmp_path):
    # OneCycleLR's warm-up is pct_start * total_steps - 1 steps long; at 5 steps and 0.2 it divided by zero
    _, decoded = synthetic_decoded(tmp_path, n=8)
    _, losses = _trained(decoded, epochs=5)
    assert len(losses) == 5 and all(np.isfinite(losses))
