"""Training data: layouts, deterministic sampling, augmentation, synthetic pairs, recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from lowlight_cli.errors import UsageError
from lowlight_cli.metrics import mean_luma
from lowlight_cli.training.data import (
    Augment,
    IdentityMix,
    PairedImages,
    PairedTrainingSet,
    SyntheticTrainingSet,
    build_run_data,
    holdout_indices,
    linear_to_srgb,
    list_pairs,
    sample_indices,
    scene_exposure_targets,
    scene_groups,
    split_pairs,
    srgb_to_linear,
    synthesize_low_light,
)
from lowlight_cli.training.recipes import (
    NEIDRecipe,
    NRLRecipe,
    Recipe,
    SymNetRecipe,
    default_recipe,
)


def _gradient_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], axis=-1)
    return np.clip(base + rng.integers(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _pairs_dir(root: Path, n: int = 4, h: int = 32, w: int = 40) -> Path:
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir(parents=True)
    for i in range(n):
        high = _gradient_image(h, w, i)
        Image.fromarray(high).save(root / "high" / f"{i}.png")
        Image.fromarray(high // 5).save(root / "low" / f"{i}.webp", lossless=True)
    return root


def _paired_set(n: int = 5, h: int = 30, w: int = 36) -> PairedTrainingSet:
    highs = [_gradient_image(h, w, i) for i in range(n)]
    lows = [x // 4 for x in highs]
    return PairedTrainingSet(PairedImages([str(i) for i in range(n)], lows, highs))


def test_list_pairs_matches_stems_across_extensions(tmp_path: Path) -> None:
    root = _pairs_dir(tmp_path / "p", n=3)
    pairs = list_pairs(root)
    assert [p[0] for p in pairs] == ["0", "1", "2"]
    assert all(lo.suffix == ".webp" and hi.suffix == ".png" for _, lo, hi in pairs)
    (root / "high" / "9.png").write_bytes((root / "high" / "0.png").read_bytes())
    with pytest.raises(UsageError, match="no partner"):
        list_pairs(root)


def test_lol_layout_uses_eval15_for_validation(tmp_path: Path) -> None:
    _pairs_dir(tmp_path / "lol" / "our485", n=3)
    _pairs_dir(tmp_path / "lol" / "eval15", n=2)
    run = build_run_data("lol", tmp_path / "lol", workers=2)
    assert len(run.train) == 3
    assert run.val is not None and len(run.val) == 2
    with pytest.raises(UsageError, match="LOL layout"):
        build_run_data("lol", tmp_path / "lol" / "nothing")


def test_holdout_is_spread_fixed_and_leaves_training_pairs() -> None:
    assert holdout_indices(310, 15)[:2] == [0, 22] and holdout_indices(310, 15)[-1] == 309
    assert len(holdout_indices(310, 15)) == 15
    assert holdout_indices(10, 0) == [] and holdout_indices(10, 1) == [5]
    with pytest.raises(UsageError, match="hold out"):
        holdout_indices(4, 4)


def test_lol_holdout_validates_on_training_pairs_and_leaves_eval15(tmp_path: Path) -> None:
    _pairs_dir(tmp_path / "lol" / "our485", n=7)
    _pairs_dir(tmp_path / "lol" / "eval15", n=2)
    run = build_run_data("lol", tmp_path / "lol", workers=1, holdout=3)
    assert run.val is not None and run.val.names == ["0", "3", "6"]
    train_names = run.train.images.names  # type: ignore[attr-defined]
    assert train_names == ["1", "2", "4", "5"]
    # Named by data set, not by the folder's absolute path on this machine.
    assert "lol/our485" in run.description and str(tmp_path) not in run.description
    assert "0, 3, 6" in run.description


def _scene(seed: int, h: int = 32, w: int = 48) -> np.ndarray:
    """A scene of its own: coarse random blocks, so no two seeds look alike when shrunk."""
    blocks = np.random.default_rng(seed).integers(20, 235, size=(4, 6, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((h // 4, w // 6, 1), np.uint8))


def test_scene_groups_join_exposures_of_one_scene_and_keep_scenes_apart() -> None:
    a, b, c = _scene(1), _scene(2), _scene(3)
    darker = (a.astype(np.float32) * 0.6).astype(np.uint8)  # a again, exposed lower
    noisy = np.clip(b.astype(np.int16) + np.random.default_rng(0).integers(-6, 7, b.shape), 0, 255)
    targets = [a, b, darker, c, noisy.astype(np.uint8)]
    assert scene_groups(targets) == [0, 1, 0, 2, 1]
    assert scene_groups([a, b, c]) == [0, 1, 2]


def test_scene_split_holds_out_every_pair_of_a_scene() -> None:
    """Holding out single pairs leaves a held-out scene in training; by scenes it does not."""
    scenes = [1, 1, 2, 3, 3, 3, 4, 5, 5]  # pair -> scene (pairs of a scene: other exposures)
    highs = [_scene(s) for s in scenes]
    lows = [(h // (2 + k % 3)).astype(np.uint8) for k, h in enumerate(highs)]
    images = PairedImages([str(k) for k in range(len(scenes))], lows, highs)
    train, val = split_pairs(images, 2, "scenes")
    held = {scenes[int(n)] for n in val.names}
    assert held == {1, 5} and val.names == ["0", "1", "7", "8"]
    assert not held & {scenes[int(n)] for n in train.names}
    train, val = split_pairs(images, 2)  # pairs 0 and 8: their scene-mates 1 and 7 still train
    assert val.names == ["0", "8"] and {"1", "7"} <= set(train.names)
    with pytest.raises(UsageError, match="5 scenes"):
        split_pairs(images, 5, "scenes")
    with pytest.raises(UsageError, match="validation split"):
        split_pairs(images, 2, "frames")


def _luma(img: np.ndarray) -> float:
    return mean_luma(img.astype(np.float32) / 255.0)


def test_scene_exposure_brings_a_scenes_targets_to_its_mean_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    """Targets of one scene shot at other exposures end at the scene's geometric mean."""
    a, b = _scene(1), _scene(2)
    bright = (a.astype(np.float32) * 0.8).astype(np.uint8)
    dim = (a.astype(np.float32) * 0.5).astype(np.uint8)
    highs = [bright, b, dim]  # pairs 0 and 2: one scene; pair 1 alone
    lows = [h // 6 for h in highs]
    images = PairedImages(["0", "1", "2"], lows, highs, source="x")
    out, info = scene_exposure_targets(images)
    want = float(np.sqrt(_luma(bright) * _luma(dim)))
    assert _luma(out.high[0]) == pytest.approx(want, abs=2e-3)
    assert _luma(out.high[2]) == pytest.approx(want, abs=2e-3)
    assert np.array_equal(out.high[1], b)  # a scene of one pair keeps its exposure
    assert all(np.array_equal(x, y) for x, y in zip(out.low, lows, strict=True))
    assert np.array_equal(images.high[0], bright)  # the input set is not changed in place
    assert info["scenes"] == 1 and info["pairs"] == 2
    assert info["gain_min"] < 1.0 < info["gain_max"]
    # A look-alike (two blocks changed: another scene, though within the split's SCENE_DISTANCE)
    # keeps its own exposure.
    alike = a.astype(np.int16)
    alike[:8, :8] += 120
    alike[8:16, 8:16] -= 120
    alike = (np.clip(alike, 0, 255) * 0.5).astype(np.uint8)
    assert scene_groups([bright, alike]) == [0, 0]
    out, info = scene_exposure_targets(PairedImages(["0", "1"], lows[:2], [bright, alike]))
    assert info["pairs"] == 0 and np.array_equal(out.high[1], alike)
    # Through the run's data: training targets rescaled, validation pairs left as they are.
    root = tmp_path / "pairs"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    for k, (lo, hi) in enumerate([*zip(lows, highs, strict=True), (a // 6, a)]):
        Image.fromarray(hi).save(root / "high" / f"{k}.png")
        Image.fromarray(lo).save(root / "low" / f"{k}.png")
    run = build_run_data("pairs", root, workers=1, holdout=1, scene_exposure=True)
    assert run.val is not None and run.val.names == ["2"] and np.array_equal(run.val.high[0], dim)
    trained = run.train.images  # type: ignore[attr-defined]
    assert trained.names == ["0", "1", "3"]
    assert _luma(trained.high[0]) == pytest.approx(_luma(trained.high[2]), abs=2e-3)
    assert "scene's mean exposure" in run.description
    with pytest.raises(UsageError, match="scene_exposure"):
        build_run_data("synthetic", root / "high", scene_exposure=True)


def test_indices_cover_each_epoch_once() -> None:
    n, batch = 7, 3
    seen = np.concatenate([sample_indices(n, 5, step, batch) for step in range(7)])  # 21 = 3 epochs
    for epoch in range(3):
        assert sorted(seen[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n : 2 * n])  # a fresh permutation per epoch


def test_sampling_is_a_pure_function_of_seed_and_step() -> None:
    ds = _paired_set()
    aug = Augment(patch=16)
    a = ds.sample(1, 10, 4, aug)
    b = ds.sample(1, 10, 4, aug)
    c = ds.sample(1, 11, 4, aug)
    d = ds.sample(2, 10, 4, aug)
    assert torch.equal(a.low, b.low) and torch.equal(a.high, b.high)
    assert not torch.equal(a.high, c.high) and not torch.equal(a.high, d.high)
    assert a.low.shape == (4, 3, 16, 16) and a.low.dtype == torch.float32
    assert float(a.low.min()) >= 0.0 and float(a.high.max()) <= 1.0


def test_ranks_split_the_global_batch() -> None:
    ds = _paired_set()
    aug = Augment(patch=12)
    full = ds.sample(3, 4, 4, aug)
    r0 = ds.sample(3, 4, 4, aug, rank=0, world=2)
    r1 = ds.sample(3, 4, 4, aug, rank=1, world=2)
    assert torch.equal(full.high[0::2], r0.high) and torch.equal(full.high[1::2], r1.high)


def test_crops_stay_aligned_through_augmentation() -> None:
    # low = high // 4 exactly, so any misaligned crop, flip or rotation breaks the relation.
    ds = _paired_set(n=3, h=40, w=50)
    for step in range(8):
        b = ds.sample(0, step, 3, Augment(patch=20))
        expected = torch.floor(b.high * 255 / 4 + 1e-4) / 255
        assert torch.allclose(b.low, expected, atol=1e-6)


def test_augmentations_are_used_and_can_be_disabled() -> None:
    img = _gradient_image(16, 16, 0)
    ds = PairedTrainingSet(PairedImages(["a"], [img], [img]))
    plain = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    outs = [ds.sample(0, s, 1, Augment(patch=16)).high[0] for s in range(24)]
    assert any(not torch.equal(o, plain) for o in outs)
    outs = [
        ds.sample(0, s, 1, Augment(patch=16, hflip=False, vflip=False, rot90=False)).high[0]
        for s in range(8)
    ]
    assert all(torch.equal(o, plain) for o in outs)


def test_exposure_augmentation_brightens_some_inputs_and_leaves_targets() -> None:
    # low = high // 4; with the augmentation some crops are brighter by one gain over the whole
    # crop (clipped at 1), the rest stay exactly as without it, and the targets never change.
    ds = _paired_set(n=3, h=40, w=50)
    aug = Augment(patch=20, exposure_gain=8.0, exposure_prob=0.5)
    brightened = 0
    for step in range(12):
        off = ds.sample(0, step, 3, Augment(patch=20))
        on = ds.sample(0, step, 3, aug)
        assert torch.equal(off.high, on.high) and on.low.dtype == torch.float32
        for lo_off, lo_on in zip(off.low, on.low, strict=True):
            if torch.allclose(lo_off, lo_on, atol=1e-6):
                continue
            brightened += 1
            unclipped = lo_on < 1.0
            gain = lo_on[unclipped & (lo_off > 0.05)] / lo_off[unclipped & (lo_off > 0.05)]
            assert float(gain.min()) > 1.0 and float(gain.max() - gain.min()) < 1e-4
            assert float(gain.max()) <= 8.0 + 1e-4 and float(lo_on.max()) <= 1.0
    assert 6 <= brightened <= 30  # 36 crops at p = 0.5


def test_exposure_augmentation_to_target_never_makes_an_input_brighter_than_its_target() -> None:
    # low = high // 4: an uncapped gain of up to 16 often overshoots the target's brightness,
    # the capped one never does (on average over the crop), yet still brightens some crops.
    ds = _paired_set(n=3, h=40, w=50)
    over = {False: 0, True: 0}
    brightened = 0
    for to_target in (False, True):
        aug = Augment(patch=20, exposure_gain=16.0, exposure_prob=1.0, exposure_to_target=to_target)
        for step in range(12):
            b = ds.sample(0, step, 3, aug)
            plain = ds.sample(0, step, 3, Augment(patch=20))
            for lo, hi, lo0 in zip(b.low, b.high, plain.low, strict=True):
                over[to_target] += int(float(lo.mean()) > float(hi.mean()) + 1e-4)
                brightened += int(to_target and float(lo.mean()) > float(lo0.mean()) + 1e-4)
    assert over[False] > 0 and over[True] == 0
    assert brightened >= 18


def test_identity_mix_replaces_a_share_of_samples_by_photo_crops_as_input_and_target() -> None:
    """Replaced samples are a photo crop on both sides (untouched by the exposure augmentation);
    every other sample is exactly the base set's; the mix is a pure function of (seed, step)."""
    base = _paired_set(n=4, h=40, w=50)
    photos = [np.full((30, 30, 3), 200 + k, np.uint8) for k in range(3)]  # bright, one grey each
    mix = IdentityMix(base, photos, 0.5, "photos")
    assert len(mix) == len(base) and mix.shapes() == base.shapes()
    assert "identity pairs: photos (3 photos, 50% of samples)" in mix.description
    replaced = 0
    for aug in (Augment(patch=20), Augment(patch=20, exposure_gain=16.0, exposure_prob=1.0)):
        for step in range(10):
            ours, theirs = mix.sample(3, step, 4, aug), base.sample(3, step, 4, aug)
            assert torch.equal(ours.low, mix.sample(3, step, 4, aug).low)
            for k in range(4):
                if torch.equal(ours.high[k], theirs.high[k]):
                    assert torch.equal(ours.low[k], theirs.low[k])
                    continue
                replaced += 1
                assert torch.equal(ours.low[k], ours.high[k])
                grey = round(float(ours.high[k].mean()) * 255)
                assert grey in (200, 201, 202) and float(ours.high[k].std()) < 1e-6
    assert 20 <= replaced <= 60  # 80 samples at p = 0.5
    with pytest.raises(UsageError, match="identity_prob"):
        IdentityMix(base, photos, 0.0)


def test_identity_data_needs_a_share_and_a_share_needs_data(tmp_path: Path) -> None:
    data = _pairs_dir(tmp_path / "pairs")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_gradient_image(32, 40, 9)).save(photos / "sky.jpg")
    run = build_run_data("pairs", data, identity_data=photos, identity_prob=0.25, workers=1)
    assert isinstance(run.train, IdentityMix)
    assert f"identity pairs: {tmp_path.name}/photos (1 photos" in run.description
    assert str(tmp_path) not in run.description  # no path of the training machine
    with pytest.raises(UsageError, match="--identity-data"):
        build_run_data("pairs", data, identity_prob=0.25, workers=1)
    with pytest.raises(UsageError, match="identity_prob"):
        build_run_data("pairs", data, identity_data=photos, workers=1)


def test_input_downscale_halves_low_only() -> None:
    ds = _paired_set(n=2, h=40, w=40)
    b = ds.sample(0, 0, 2, Augment(patch=32, input_downscale=2))
    assert b.low.shape == (2, 3, 16, 16) and b.high.shape == (2, 3, 32, 32)


def test_patch_larger_than_image_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--patch"):
        _paired_set(h=20, w=20).sample(0, 0, 1, Augment(patch=64))


def test_rectangular_crops_keep_their_shape_and_alignment() -> None:
    # low = high // 4 exactly, as above; a quarter turn would give a (B, 3, 24, 16) batch.
    ds = _paired_set(n=3, h=30, w=36)
    turns = set()
    for step in range(12):
        b = ds.sample(0, step, 3, Augment(patch=16, patch_width=24))
        assert b.high.shape == (3, 3, 16, 24) and b.low.shape == (3, 3, 16, 24)
        expected = torch.floor(b.high * 255 / 4 + 1e-4) / 255
        assert torch.allclose(b.low, expected, atol=1e-6)
        # the gradient image grows left to right in red: a half turn reverses it
        turns.update(bool(h[0, :, 0].mean() > h[0, :, -1].mean()) for h in b.high)
    assert turns == {False, True}  # flips and half turns are still drawn


def test_rectangular_crops_turn_portrait_photos_that_only_fit_turned() -> None:
    # A 40 x 24 portrait photo cannot give a 24 x 32 (h x w) crop as it stands; turned it can.
    photo = _gradient_image(40, 24, 0)
    ds = PairedTrainingSet(PairedImages(["p"], [photo], [photo]))
    plain = Augment(patch=24, patch_width=32, hflip=False, vflip=False, rot90=False)
    b = ds.sample(0, 0, 1, plain)
    assert b.high.shape == (1, 3, 24, 32)
    turned = np.rot90(photo)
    crops = [turned[:, x : x + 32] for x in range(turned.shape[1] - 32 + 1)]
    got = (b.high[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert any(np.array_equal(got, c) for c in crops)
    with pytest.raises(UsageError, match="48x24"):  # fits neither way round
        ds.sample(0, 0, 1, Augment(patch=24, patch_width=48))


def test_a_square_crop_is_the_same_whichever_way_it_is_given() -> None:
    # patch_width 0 and patch_width == patch: the same crops and draws, sample for sample.
    ds = _paired_set()
    for step in range(4):
        a = ds.sample(5, step, 4, Augment(patch=16))
        b = ds.sample(5, step, 4, Augment(patch=16, patch_width=16))
        assert torch.equal(a.high, b.high) and torch.equal(a.low, b.low)


def test_srgb_round_trip() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)


def test_synthetic_low_light_is_dark_noisy_and_deterministic() -> None:
    high = _gradient_image(48, 48, 2).astype(np.float32) / 255
    a = synthesize_low_light(high, np.random.default_rng(7))
    b = synthesize_low_light(high, np.random.default_rng(7))
    c = synthesize_low_light(high, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == high.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    means = [synthesize_low_light(high, np.random.default_rng(s)).mean() for s in range(20)]
    assert max(means) < high.mean()  # always darker
    # Linear-light exposure: the darkening follows the exposure, not a constant offset.
    lin_ratio = srgb_to_linear(a).mean() / srgb_to_linear(high).mean()
    assert 0.01 < lin_ratio < 0.5


def test_synthetic_set_samples_pairs(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        Image.fromarray(_gradient_image(30, 34, i)).save(photos / f"{i}.jpg", quality=95)
    run = build_run_data("synthetic", photos, seed=1, workers=1)
    assert isinstance(run.train, SyntheticTrainingSet)
    assert len(run.train) == 9 and run.val is not None and len(run.val) == 1  # held out
    b = run.train.sample(0, 0, 2, Augment(patch=24))
    assert torch.equal(b.low, run.train.sample(0, 0, 2, Augment(patch=24)).low)
    assert float(b.low.mean()) < float(b.high.mean())


def test_schedule_converts_epochs_and_scales_milestones() -> None:
    symnet = SymNetRecipe()
    sched = symnet.resolve(210)  # 105 steps per epoch at batch 2
    assert sched.steps_per_epoch == 105 and sched.total_steps == 250 * 105
    assert sched.milestones == (100 * 105, 200 * 105)
    short = symnet.resolve(210, steps=1000)
    assert short.total_steps == 1000 and short.milestones == (400, 800)
    assert short.lr_at(399) == pytest.approx(2e-4) and short.lr_at(400) == pytest.approx(1e-4)
    assert short.lr_at(999) == pytest.approx(5e-5)
    nrl = NRLRecipe().resolve(2520)  # LOL's 210 images hold 12 patches of 128 each
    assert nrl.steps_per_epoch == 14  # 1/6 of the patches at batch 32
    assert len(nrl.milestones) == 19 and nrl.lr_at(nrl.total_steps - 1) == pytest.approx(
        5e-4 * 0.95**19
    )
    with pytest.raises(UsageError):
        symnet.resolve(210, steps=10, epochs=2)


def test_training_set_counts_images_or_patches() -> None:
    ds = _paired_set(n=3, h=30, w=50)
    assert ds.count("images", 16) == 3
    assert ds.count("patches", 16) == 3 * 1 * 3
    assert ds.count("patches", 16, 25) == 3 * 1 * 2
    with pytest.raises(UsageError):
        ds.count("bogus", 16)


def test_recipes_follow_the_papers() -> None:
    neid = default_recipe("neid")
    assert isinstance(neid, NEIDRecipe)
    assert (neid.patch, neid.input_downscale, neid.batch_size, neid.hflip) == (256, 2, 8, False)
    frlie = default_recipe("frlie")
    assert frlie.betas == (0.5, 0.9) and frlie.batch_size == 16
    with pytest.raises(UsageError, match="classical"):
        default_recipe("gamma")
    assert default_recipe("symnet").override(lr=1e-3, patch=None).lr == 1e-3
    with pytest.raises(UsageError, match="no setting"):
        Recipe().override(bogus=1)


@pytest.mark.shared
def test_lol_training_split_loads() -> None:
    root = shared_path("lol")
    shared_path("lol", "our485")
    pairs = list_pairs(root / "our485")
    assert len(pairs) >= 100
    assert all(lo.stem == hi.stem for _, lo, hi in pairs)
