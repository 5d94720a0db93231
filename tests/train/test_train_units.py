"""Units of the trainer: class weights, augmentation pipeline, model building and freezing."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402

from dermedge.train.data import (  # noqa: E402
    Augment,
    SplitArrays,
    augment_image,
    class_weights,
    make_dataset,
    source_balanced_weights,
)
from dermedge.train.models import (  # noqa: E402
    ARCHS,
    WeightsError,
    build_model,
    input_contract,
    set_trainable,
)


def _arrays(n: int = 10, size: int = 32) -> SplitArrays:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = (np.arange(n) % 3 == 0).astype(np.float32)
    return SplitArrays("train", x, y, [f"{i}.jpg" for i in range(n)], {})


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]))
    assert w == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    # each class then carries half of the total weight
    assert 3 * w[0] == pytest.approx(1 * w[1])


def test_source_balanced_weights_give_every_source_a_balanced_prior():
    # source a: 1 malignant in 4 (like HAM10000 thumbnails), b: 3 in 4 (like isic-mvb), c: benign only
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    src = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    w = source_balanced_weights(y, src)
    for s in ("a", "b"):
        m = np.array(src) == s
        assert w[m & (y == 1)].sum() == pytest.approx(
            w[m & (y == 0)].sum()
        )  # 50/50 within the source
        assert w[m].sum() == pytest.approx(m.sum())  # each source keeps its size
    glob = class_weights(y)
    assert np.allclose(w[8:], glob[0])  # a one-class source falls back to the global weights
    # one global balance (4 malignant, 6 benign overall) would push source b from 3:1 to 4.5:1
    gb = np.array([glob[int(v)] for v in y])
    assert gb[4:7].sum() / gb[7] == pytest.approx(4.5)


def test_make_dataset_takes_per_image_weights():
    data = _arrays(6)
    w = np.arange(1, 7, dtype=np.float32)
    batches = list(make_dataset(data, 6, False, weights=w).as_numpy_iterator())
    assert np.array_equal(batches[0][2], w)
    with pytest.raises(ValueError, match="5 sample weights for 6 images"):
        make_dataset(data, 6, False, weights=w[:5])


def test_augmentation_is_seeded_and_keeps_range():
    import tensorflow as tf

    img = tf.constant(np.random.default_rng(1).uniform(0, 255, (32, 32, 3)).astype("float32"))
    seed = tf.constant([3, 4], dtype=tf.int64)
    a = augment_image(img, seed, Augment(), 32).numpy()
    b = augment_image(img, seed, Augment(), 32).numpy()
    c = augment_image(img, tf.constant([5, 6], dtype=tf.int64), Augment(), 32).numpy()
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 255
    off = Augment(
        flips=False,
        rot90=False,
        rotate_deg=0,
        zoom=0,
        shift=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    assert np.allclose(augment_image(img, seed, off, 32).numpy(), img.numpy())


def test_make_dataset_training_and_eval():
    data = _arrays(10)
    w = class_weights(data.y)
    train = list(make_dataset(data, 4, True, seed=1, weights=w).as_numpy_iterator())
    assert [len(b[0]) for b in train] == [4, 4, 2] and len(train[0]) == 3
    x, y, sw = train[0]
    assert x.dtype == np.float32 and y.shape == (4, 1) and sw.shape == (4,)
    assert np.isin(sw, np.float32([w[0], w[1]])).all()
    again = list(make_dataset(data, 4, True, seed=1, weights=w).as_numpy_iterator())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(train, again, strict=True))
    ev = list(make_dataset(data, 4, False).as_numpy_iterator())
    assert np.array_equal(np.concatenate([b[0] for b in ev]), data.x.astype(np.float32))
    assert np.array_equal(np.concatenate([b[1] for b in ev]).ravel(), data.y)


@pytest.mark.parametrize("arch", ["simple_cnn", "mobilenet_v2"])
def test_models_take_raw_pixels(arch):
    m = build_model(arch, 32 if arch == "simple_cnn" else 64, None)
    assert m.layers[1].name == "normalize" and m.output_shape == (None, 1)
    c = input_contract(arch, 64)
    norm = m.get_layer("normalize")
    # (x - mean) / std == x * scale + offset
    assert norm.scale == pytest.approx(1 / c.std) and norm.offset == pytest.approx(-c.mean / c.std)
    assert m.get_layer("malignant").activation.__name__ == "sigmoid"


@pytest.mark.slow
def test_mobilenet_freezing_keeps_batchnorm_in_inference_mode():
    m = build_model("mobilenet_v2", 64, None)
    frozen = set_trainable(m, "mobilenet_v2", 0)
    head = m.get_layer("malignant")
    assert frozen["trainable_params"] == sum(int(np.prod(w.shape)) for w in head.weights)
    top = set_trainable(m, "mobilenet_v2", 2)
    assert top["trainable_params"] > frozen["trainable_params"]
    assert m.get_layer("block_16_project").trainable and m.get_layer("block_15_expand").trainable
    assert not m.get_layer("block_14_expand").trainable and not m.get_layer("Conv1").trainable
    assert m.get_layer("Conv_1").trainable
    bns = [la for la in m.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and not any(b.trainable for b in bns)
    # frozen BN uses its moving statistics even when called with training=True
    bn = m.get_layer("block_16_project_BN")
    before = [w.copy() for w in bn.get_weights()]
    m.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    m.fit(x, np.array([[0], [1], [0], [1]], "float32"), epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, bn.get_weights(), strict=True))
    everything = set_trainable(m, "mobilenet_v2", None)  # from scratch: BN trains too
    assert all(b.trainable for b in bns)
    moving = sum(int(np.prod(w.shape)) for b in bns for w in b.non_trainable_weights)
    assert everything["trainable_params"] == m.count_params() - moving


def test_build_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet", 64)
    with pytest.raises(WeightsError, match="not found"):
        build_model("simple_cnn", 64, str(tmp_path / "missing.weights.h5"))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(WeightsError, match="cannot load"):
        build_model("simple_cnn", 32, str(bad))
    # offline ImageNet download for MobileNetV2: a clear WeightsError, fast
    from keras.src.utils import file_utils

    def offline(*a, **k):
        raise Exception("URL fetch failure: no network")  # noqa: TRY002 - what keras raises

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsError, match="--weights none"):
        build_model("mobilenet_v2", 96, "imagenet")


def test_weights_path_roundtrip(tmp_path):
    m = build_model("simple_cnn", 32, None)
    path = tmp_path / "w.weights.h5"
    m.save_weights(path)
    m2 = build_model("simple_cnn", 32, str(path))
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), m2.get_weights(), strict=True))


def test_archs_listed():
    assert ARCHS == ("simple_cnn", "efficientnet_lite0", "mobilenet_v2")


def _real_photo(size: int = 96) -> np.ndarray:
    from dermedge_testing import DATA

    from dermedge.data.contract import InputContract, preprocess

    photo = next((DATA / "derm7pt" / "images" / "NEL").glob("*.jpg"), None)
    if photo is None:
        pytest.skip(f"no Derm7pt photos under {DATA}")
    return preprocess(photo, InputContract(size=size))


def test_field_augmentation_changes_the_look_seeded_and_in_range():
    import tensorflow as tf

    from dermedge.train.data import augment_preset

    img = tf.constant(_real_photo().astype(np.float32))
    field = augment_preset("field")
    outs = [augment_image(img, tf.constant([i, 3], tf.int64), field, 96).numpy() for i in range(24)]
    again = augment_image(img, tf.constant([5, 3], tf.int64), field, 96).numpy()
    np.testing.assert_array_equal(outs[5], again)  # seeded
    assert all(o.min() >= 0 and o.max() <= 255 and o.shape == (96, 96, 3) for o in outs)
    # some draws carry a dark field-of-view border: corners near black while the centre is not
    corners = [float(np.mean([o[:6, :6].mean(), o[-6:, -6:].mean()])) for o in outs]
    assert min(corners) < 20 < float(img.numpy().mean())
    # colour casts: the mean colour balance varies much more than with the basic preset
    basic = [
        augment_image(img, tf.constant([i, 3], tf.int64), Augment(), 96).numpy() for i in range(24)
    ]

    def cast(o):
        return float(o[..., 0].mean() / max(o[..., 2].mean(), 1))

    assert np.std([cast(o) for o in outs]) > np.std([cast(o) for o in basic])
    assert augment_preset("none") == Augment.none()
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_preset("wild")


def _two_sources(
    seed: int, n_a: int, a_low: float, b_malignant: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and sources: `n_a` malignant + `n_a` benign of source "a" (malignant scored
    from `a_low` up), then 40 + 40 of "b", its malignant scored in `b_malignant`."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_a), np.zeros(n_a), np.ones(40), np.zeros(40)]
    p = np.r_[
        rng.uniform(a_low, 1, n_a),
        rng.uniform(0, 0.5, n_a),
        rng.uniform(*b_malignant, 40),
        rng.uniform(0, 0.4, 40),
    ]
    return y, p, np.array(["a"] * 2 * n_a + ["b"] * 80)


def test_threshold_meets_the_target_in_every_source():
    from dermedge.train.evaluate import (
        binary_metrics,
        choose_threshold,
        choose_threshold_across_sources,
    )

    # source "a" scores its malignant lesions high, source "b" (another device) lower
    y, p, src = _two_sources(0, 100, 0.5, (0.2, 0.7))
    pooled = choose_threshold(y, p, 0.95)
    worst = choose_threshold_across_sources(y, p, src, 0.95)
    assert worst["pool"] == "worst-source" and worst["binding_source"] == "b"
    assert worst["threshold"] < pooled["threshold"]
    b = src == "b"
    assert binary_metrics(y[b], p[b], worst["threshold"])["recall"] >= 0.95
    assert binary_metrics(y[b], p[b], pooled["threshold"])["recall"] < 0.95
    assert set(worst["per_source"]) == {"a", "b"}
    # a source with too few malignant images is reported, not binding; one source = pooled
    few = choose_threshold_across_sources(y[:215], p[:215], src[:215], 0.95)
    assert few["per_source"]["b"]["n_pos"] == 15 and few["per_source"]["b"]["own_threshold"] is None
    assert few["per_source"]["a"]["own_threshold"] is not None
    single = choose_threshold_across_sources(y, p, None, 0.95)
    assert single["threshold"] == pooled["threshold"] and single["pool"] == "pooled"


def test_pooled_floor_keeps_the_pooled_target_and_a_floor_in_every_source():
    from dermedge.metrics import (
        SOURCE_FLOOR_SENSITIVITY,
        binary_metrics,
        choose_threshold,
        threshold_for_policy,
    )

    # source "b" scores its malignant lesions lower; the worst-source rule lets it set the threshold
    y, p, src = _two_sources(1, 200, 0.45, (0.05, 0.8))
    worst = threshold_for_policy(y, p, src, "worst-source", 0.95)
    floor = threshold_for_policy(y, p, src, "pooled-floor", 0.95)
    pooled = threshold_for_policy(y, p, src, "pooled", 0.95)
    assert pooled["threshold"] == choose_threshold(y, p, 0.95)["threshold"]
    assert worst["threshold"] < floor["threshold"] <= pooled["threshold"]
    assert floor["pool"] == "pooled-floor" and floor["source_floor"] == SOURCE_FLOOR_SENSITIVITY
    for name in ("a", "b"):
        m = src == name
        assert binary_metrics(y[m], p[m], floor["threshold"])["recall"] >= SOURCE_FLOOR_SENSITIVITY
    assert binary_metrics(y, p, floor["threshold"])["recall"] >= 0.95
    assert (
        binary_metrics(y, p, floor["threshold"])["specificity"]
        > binary_metrics(y, p, worst["threshold"])["specificity"]
    )
    with pytest.raises(ValueError, match="unknown threshold pool"):
        threshold_for_policy(y, p, src, "best-source")


def test_training_colour_constancy_matches_the_contract():
    """Re-applied after augmentation, the TF Shades of Gray gives the contract's pixels."""
    import tensorflow as tf

    from dermedge.data.contract import shades_of_gray
    from dermedge.train.data import shades_of_gray_tf

    x = _real_photo()
    got = shades_of_gray_tf(tf.constant(x.astype(np.float32))).numpy()
    assert np.abs(got - shades_of_gray(x).astype(np.float32)).max() <= 1
    # a colour cast added by augmentation is removed again
    cast = np.clip(x * np.array([1.15, 1.0, 0.85]), 0, 255).astype(np.float32)
    fixed = shades_of_gray_tf(tf.constant(cast)).numpy()
    ratio = lambda o: o[..., 0].mean() / o[..., 2].mean()  # noqa: E731
    assert abs(ratio(fixed) - ratio(shades_of_gray(x))) < 0.05 < abs(ratio(cast) - ratio(x))


def test_source_weights_are_capped_for_a_sub_source_with_a_handful_of_one_class():
    from dermedge.train.data import MAX_WEIGHT_RATIO, source_class_weights

    # like HAM10000's vidir_molemax: 3 melanomas in 1958 images, beside a balanced source
    y = np.array([1] * 3 + [0] * 1955 + [1] * 500 + [0] * 500)
    src = ["molemax"] * 1958 + ["other"] * 1000
    per = source_class_weights(y, src)
    glob = class_weights(y)
    assert per["molemax"][1] == pytest.approx(MAX_WEIGHT_RATIO * glob[1])  # not 1958 / 6 = 326
    assert per["molemax"][1] < 20
    assert per["molemax"][0] == pytest.approx(1958 / (2 * 1955))  # uncapped: balanced
    assert per["other"] == class_weights(y[1958:])


def _edge_framed_photo(size: int = 64) -> np.ndarray:
    """A 'lesion' pattern inside a 4-px uniform skin-coloured edge."""
    rng = np.random.default_rng(1)
    img = np.full((size, size, 3), (200, 150, 120), np.float32)
    img[4:-4, 4:-4] = rng.integers(0, 120, (size - 8, size - 8, 3))
    return img


def test_scale_zoom_out_fills_with_the_photos_edge_pixels_not_a_mirror_image():
    import tensorflow as tf

    from dermedge.train.data import augment_preset

    img = tf.constant(_edge_framed_photo())
    still = dict(flips=False, rot90=False, rotate_deg=0, shift=0, brightness=0, contrast=0)
    still.update(saturation=0, hue=0)
    out = {
        fill: augment_image(
            img,
            tf.constant([1, 2], tf.int64),
            Augment(zoom_range=(0.56, 0.56), fill=fill, **still),
            64,
        ).numpy()
        for fill in ("nearest", "reflect")
    }
    corner = out["nearest"][:8, :8].reshape(-1, 3)
    np.testing.assert_allclose(corner, np.tile([200, 150, 120], (64, 1)), atol=1)  # skin only
    assert np.abs(out["reflect"][:8, :8] - [200, 150, 120]).max() > 50  # mirrored lesion there
    centre = out["nearest"][24:40, 24:40]
    assert np.abs(centre - [200, 150, 120]).max() > 50  # the lesion, smaller, still in the middle
    assert augment_preset("field-scale").fill == "nearest"
    assert augment_preset("field-scale").vignette == augment_preset("field").vignette
    with pytest.raises(ValueError, match="unknown fill"):
        Augment(fill="wrap")


def test_scale_zoom_is_log_uniform_over_the_range():
    import tensorflow as tf

    from dermedge.train.data import augment_preset, zoom_scale

    aug = augment_preset("scale")
    u = tf.random.stateless_uniform([20000], seed=[3, 4], minval=-1.0, maxval=1.0)
    s = zoom_scale(u, aug).numpy()
    assert s.min() >= 0.56 - 1e-6 and s.max() <= 1.8 + 1e-6
    assert s.min() < 0.58 and s.max() > 1.75  # the whole range is used
    # log-uniform: as many draws below the geometric mean as above it; zoom-outs ~ half
    assert np.median(s) == pytest.approx(np.sqrt(0.56 * 1.8), rel=0.03)
    assert np.mean(s < 1) == pytest.approx(np.log(1 / 0.56) / np.log(1.8 / 0.56), abs=0.02)
    basic = zoom_scale(u, Augment()).numpy()
    assert basic.min() >= 0.85 - 1e-6 and basic.max() <= 1.15 + 1e-6


def test_run_card_with_a_one_class_source_is_written_with_nulls(tmp_path):
    import json

    from dermedge.train.card import write_card

    # a sub-source whose test split has no malignant image has no AUC (NaN): the card says null
    card = {"metrics": {"test_per_source": {"ham10000:vidir_molemax": {"roc_auc": float("nan")}}}}
    path = write_card(card, tmp_path)
    row = json.loads(path.read_text())["metrics"]["test_per_source"]["ham10000:vidir_molemax"]
    assert row == {"roc_auc": None}


def test_train_data_folder_with_sub_sources(tmp_path, ham_dir, isic_dir):
    import csv

    from dermedge_testing import write_isic_manifest

    from dermedge.train.trainer import TrainError, resolve_records

    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = rows[:20] + [r for r in rows if r["dx"] == "mel"][:20]
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    for r in picked:
        (root / "images" / f"{r['image_id']}.jpg").symlink_to(
            ham_dir / "images" / f"{r['image_id']}.jpg"
        )
    with open(root / "HAM10000_metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    run = tmp_path / "run"
    run.mkdir()
    records, csv_path = resolve_records(str(root), run, source_by="dataset")
    assert csv_path == run / "manifest.csv"
    assert {r.source for r in records} == {f"ham:{r['dataset']}" for r in picked}
    manifest = write_isic_manifest(tmp_path / "m", isic_dir, [("train", 2, "train", 0)], "isic")
    with pytest.raises(TrainError, match="--source-by applies to a dataset folder"):
        resolve_records(str(manifest), None, source_by="dataset")
    with pytest.raises(TrainError, match="no column 'clinic'"):
        resolve_records(str(root), None, source_by="clinic")
