"""Data sources (npz, image folders, label tables, tfds, synthetic, out-of-domain), validation and tiny-set draws."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from conftest import missing
from PIL import Image

from practise_jax.errors import UserError
from practise_jax import data as data_lib
from practise_jax.data import folders
from practise_jax.data import images as images_lib


def write_image(path, size=(40, 30), mode="RGB", colour=(200, 30, 60), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        image = Image.new("RGB", size, colour)
    elif mode == "L":
        image = Image.new("L", size, colour[0])
    elif mode == "RGBA":
        image = Image.new("RGBA", size, colour + (128,))
    else:  # palette
        image = Image.new("RGB", size, colour).convert("P")
    image.save(path, format=fmt)
    return path


@pytest.fixture
def class_folder(tmp_path):
    """Three classes ('cat', 'ant', 'bee' -> ant=0, bee=1, cat=2), mixed sizes, modes and formats."""
    root = tmp_path / "train"
    write_image(root / "cat" / "a.jpg", (40, 30), colour=(250, 10, 10))
    write_image(root / "cat" / "b.png", (25, 50), mode="P", colour=(240, 20, 20))
    write_image(root / "ant" / "a.JPEG", (64, 64), mode="L", colour=(90, 90, 90))
    write_image(root / "ant" / "deeper" / "c.png", (33, 31), mode="RGBA", colour=(10, 250, 10))
    write_image(root / "bee" / "x.jpeg", (50, 40), colour=(10, 10, 250))
    (root / "bee" / "notes.txt").write_text("not an image")
    write_image(root / "bee" / ".hidden.jpg", (50, 40))
    write_image(root / ".ipynb_checkpoints" / "z.jpg", (50, 40))
    return root


def test_folder_classes_are_sorted_subfolders_and_modes_become_rgb(class_folder):
    data = data_lib.load_source(f"folder:{class_folder}", image_size=32)
    assert data.images.shape == (5, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 1, 2, 2]  # ant (2 files, one deeper), bee, cat
    assert data.labelled and data.source == f"folder:{class_folder}"
    grey = data.images[0]  # ant/a.JPEG, greyscale
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    assert data.images[4].mean(axis=(0, 1))[0] > 200  # cat/b.png, palette red
    files, labels, classes = folders.list_folder(str(class_folder))
    assert classes == ["ant", "bee", "cat"] and len(files) == 5


def test_imagenet_alias_and_stored_size_for_large_models(class_folder):
    data = data_lib.load_source(f"imagenet:{class_folder}", image_size=224)
    assert data.images.shape == (5, 256, 256, 3)
    assert data_lib.stored_size(224) == 256 and data_lib.stored_size(32) == 32 and data_lib.stored_size(64) == 73


def test_varying_sizes_need_an_image_size(class_folder):
    with pytest.raises(UserError, match="differ in size.*image size"):
        data_lib.load_source(f"folder:{class_folder}")


def test_fit_image_is_resize_shorter_side_then_centre_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    fitted = images_lib.fit_image(image, 224)
    expected = np.asarray(image.resize((341, 256), Image.BILINEAR))[:, 42:298]  # int(256*500/375)=341, left=round(42.5)
    np.testing.assert_array_equal(fitted, expected)
    assert images_lib.fit_image(image, 32).shape == (32, 32, 3)  # small models: straight to S x S


def test_unreadable_image_is_named(class_folder):
    bad = class_folder / "bee" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        data_lib.load_source(f"folder:{class_folder}", image_size=32)
    # Only chosen images are decoded: a set that leaves the bad file out loads.
    files, _, _ = folders.list_folder(str(class_folder))
    keep = [i for i, f in enumerate(files) if f.name != "broken.jpg"]
    assert len(data_lib.load_source(f"folder:{class_folder}", image_size=32, indices=keep)) == len(keep)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data_lib.load_source(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        data_lib.load_source(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "a" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="no images"):
        data_lib.load_source(f"folder:{tmp_path / 'noimages'}")
    write_image(tmp_path / "flat" / "x.jpg")
    with pytest.raises(UserError, match="labels.csv"):
        data_lib.load_source(f"folder:{tmp_path / 'flat'}")
    write_image(tmp_path / "onempty" / "a" / "x.jpg")
    (tmp_path / "onempty" / "b").mkdir()
    with pytest.raises(UserError, match=r"\['b'\] hold no images"):
        data_lib.load_source(f"folder:{tmp_path / 'onempty'}")


def test_flat_folder_with_label_table(tmp_path):
    root = tmp_path / "sample"
    write_image(root / "images" / "n2_b.JPEG", (60, 40))
    write_image(root / "images" / "n1_a.JPEG", (30, 50), mode="L")
    (root / "labels.csv").write_text("file,class_index,class_name\nimages/n1_a.JPEG,0,a\nimages/n2_b.JPEG,7,b\n")
    data = data_lib.load_source(f"folder:{root}", image_size=32)
    assert data.labels.tolist() == [0, 7] and data.images.shape == (2, 32, 32, 3)
    assert folders.list_folder(str(root / "labels.csv"))[2] == ["a", "b"]
    (root / "labels.csv").write_text("file,label\nimages/missing.JPEG,0\n")
    with pytest.raises(UserError, match="missing.JPEG' does not exist"):
        data_lib.load_source(f"folder:{root}")
    (root / "labels.csv").write_text("path,cls\nimages/n1_a.JPEG,0\n")
    with pytest.raises(UserError, match="'file' column"):
        data_lib.load_source(f"folder:{root}")
    (root / "labels.csv").write_text("file,label\nimages/n1_a.JPEG,zero\n")
    with pytest.raises(UserError, match="line 2.*not an integer"):
        data_lib.load_source(f"folder:{root}")


def test_npz_round_trip_indices_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(6) % 3)
    data = data_lib.load_source(f"npz:{path}", indices=[4, 1])
    np.testing.assert_array_equal(data.images, images[[4, 1]])
    assert data.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(data_lib.load_source(f"npz:{path}", image_size=32).images, images)  # already 32x32
    assert data_lib.load_source(f"npz:{path}", image_size=224).images.shape == (6, 256, 256, 3)
    with pytest.raises(UserError, match="indices span"):
        data_lib.load_source(f"npz:{path}", indices=[0, 6])


def test_spec_errors():
    with pytest.raises(UserError, match="unknown data kind 'csv'"):
        data_lib.load_source("csv:x")
    with pytest.raises(UserError, match="names no path"):
        data_lib.load_source("folder:")
    with pytest.raises(UserError, match="whole numbers"):
        data_lib.load_source("synthetic:many")


# --------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_prefix_stable():
    a = data_lib.load_source("synthetic:30", image_size=32)
    b = data_lib.synthetic(30, 32, seed=0)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (30, 32, 32, 3) and a.labels.tolist() == [i % 10 for i in range(30)]
    longer = data_lib.load_source("synthetic:50")
    np.testing.assert_array_equal(longer.images[:30], a.images)
    other = data_lib.load_source("synthetic:30:10:1")
    assert not np.array_equal(other.images, a.images)
    assert data_lib.load_source("synthetic:20:4", image_size=224).images.shape == (20, 256, 256, 3)
    picked = data_lib.load_source("synthetic:50", indices=[7, 3])
    np.testing.assert_array_equal(picked.images, longer.images[[7, 3]])
    assert data_lib.load_source("synthetic").images.shape == (1000, 32, 32, 3)


@pytest.mark.parametrize("size", [16, 32])
def test_synthetic_classes_are_separable_on_raw_pixels(size):
    data = data_lib.synthetic(400, size, seed=3)
    x = data.images.reshape(len(data), -1).astype(np.float32)
    y = data.labels
    train, test = slice(0, 200), slice(200, 400)
    means = np.stack([x[train][y[train] == c].mean(0) for c in range(10)])
    predicted = np.argmin(((x[test][:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y[test]).mean() > 0.6  # chance is 0.1; measured about 0.9


# --------------------------------------------------------------------------- out-of-domain and tfds

def test_out_of_domain_labels_are_not_checked(class_folder):
    data = data_lib.out_of_domain(f"folder:{class_folder}", 32)
    assert not data.labelled and data.source.startswith("ood:folder:")
    data_lib.check_fits(data, 32, 2, "cifar_resnet20")  # label 2 >= 2 classes, but labels mean nothing here
    with pytest.raises(UserError, match="out of range.*ood:SPEC"):
        data_lib.check_fits(data_lib.load_source(f"folder:{class_folder}", image_size=32), 32, 2, "cifar_resnet20")
    tiny, indices = data_lib.load_tiny_set(f"ood:folder:{class_folder}", 3, seed=1, image_size=32)
    assert len(tiny) == 3 and not tiny.labelled and len(set(indices.tolist())) == 3


def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(UserError, match=r"pip install 'practise-jax\[tfds\]'"):
        data_lib.load_source("tfds:cifar10")


def fake_tfds(prepared: bool, images, labels):
    module = types.ModuleType("tensorflow_datasets")
    calls = []

    def load(name, split, **kwargs):
        calls.append((name, split, kwargs))
        if not prepared:
            raise AssertionError(f"Dataset {name}: could not find data in ~/tensorflow_datasets.")
        return list(zip(images, labels))

    module.load = load
    module.as_numpy = lambda dataset: iter(dataset)
    module.decode = types.SimpleNamespace(SkipDecoding=lambda: "skip")
    module.calls = calls
    return module


def test_tfds_with_a_prepared_dataset(monkeypatch):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 30), (32, 32), (20, 50)]]
    images.append(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))  # greyscale, as mnist
    module = fake_tfds(True, images, [3, 1, 4, 1])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    data = data_lib.load_source("tfds:toy:test", image_size=32)
    assert data.images.shape == (4, 32, 32, 3) and data.labels.tolist() == [3, 1, 4, 1]
    assert data.source == "tfds:toy:test"
    name, split, kwargs = module.calls[0]
    assert (name, split) == ("toy", "test") and kwargs["download"] is False and kwargs["try_gcs"] is False
    picked = data_lib.load_source("tfds:toy", image_size=32, indices=[2, 0])
    assert picked.labels.tolist() == [4, 3] and module.calls[-1][1] == "train"
    np.testing.assert_array_equal(picked.images[1], data.images[0])
    assert data_lib.source_labels("tfds:toy").tolist() == [3, 1, 4, 1]


def test_tfds_not_prepared(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(False, [], []))
    with pytest.raises(UserError, match=r"not available locally.*tfds build imagenet2012.*TFDS_DATA_DIR"):
        data_lib.load_source("tfds:imagenet2012:validation", image_size=224)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("images, labels, num_classes, words", [
    (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 10]), 10, r"outside 0\.\.9"),
    (np.zeros((2, 8, 8, 3), np.uint8), np.array([0.0, 1.0]), None, "integers"),
    (np.zeros((2, 8, 8, 3), np.int16), np.array([0, 1]), None, "uint8"),
    (np.zeros((2, 8, 8, 2), np.uint8), np.array([0, 1]), None, "N x H x W x 3"),
])
def test_validate(images, labels, num_classes, words):
    with pytest.raises(UserError, match=words):
        data_lib.validate(images, labels, "test", num_classes)


def test_check_fits_with_margin():
    big = data_lib.ImageSet(np.zeros((1, 256, 256, 3), np.uint8), np.zeros(1, np.int64), "x")
    data_lib.check_fits(big, 224, 1000, "resnet18", margin=True)
    with pytest.raises(UserError, match="256x256 but resnet18 takes 224x224"):
        data_lib.check_fits(big, 224, 1000, "resnet18")
    small = data_lib.ImageSet(np.zeros((1, 40, 40, 3), np.uint8), np.zeros(1, np.int64), "x")
    with pytest.raises(UserError, match="takes 32x32"):
        data_lib.check_fits(small, 32, 10, "cifar_resnet20", margin=True)


# --------------------------------------------------------------------------- tiny-set draws

LABELS = np.repeat(np.arange(10), 20)  # 10 classes x 20 images


def test_reference_draw_is_seeded_without_duplicates_and_unbalanced_below_the_class_count():
    draws = [data_lib.sample_tiny_set(LABELS, 8, seed) for seed in range(1, 21)]
    np.testing.assert_array_equal(data_lib.sample_tiny_set(LABELS, 8, 1), draws[0])
    assert all(len(d) == 8 and len(set(d.tolist())) == 8 for d in draws)
    # class-uniform per draw: some seed gives a class twice (8 draws over 10 classes)
    assert any(np.bincount(LABELS[d], minlength=10).max() > 1 for d in draws)


def test_reference_draw_is_per_class_from_the_class_count_up():
    indices = data_lib.sample_tiny_set(LABELS, 35, seed=2)
    assert len(indices) == 30 and np.all(np.bincount(LABELS[indices]) == 3)  # 35 // 10 per class, as the reference
    assert len(set(indices.tolist())) == 30
    assert len(data_lib.sample_tiny_set(LABELS, -1, seed=0)) == len(LABELS)


@pytest.mark.parametrize("shots", [7, 10, 35, 200])
def test_balanced_draw(shots):
    indices = data_lib.sample_tiny_set(LABELS, shots, seed=5, balanced=True)
    counts = np.bincount(LABELS[indices], minlength=10)
    assert len(indices) == shots and len(set(indices.tolist())) == shots
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(indices, data_lib.sample_tiny_set(LABELS, shots, seed=5, balanced=True))
    if shots < 200:
        assert not np.array_equal(indices, data_lib.sample_tiny_set(LABELS, shots, seed=6, balanced=True))


def test_draw_errors():
    with pytest.raises(UserError, match="more images than the data holds"):
        data_lib.sample_tiny_set(LABELS, 201, seed=0)
    with pytest.raises(UserError, match="positive number"):
        data_lib.sample_tiny_set(LABELS, 0, seed=0)
    uneven = np.array([0] * 5 + [1] * 2)
    with pytest.raises(UserError, match="classes \\[1\\] have fewer"):
        data_lib.sample_tiny_set(uneven, 6, seed=0)
    with pytest.raises(UserError, match="balanced.*too few"):
        data_lib.sample_tiny_set(uneven, 6, seed=0, balanced=True)
    with pytest.raises(UserError, match="holds no images"):
        data_lib.sample_tiny_set(np.zeros(0, np.int64), 1, seed=0)
    with pytest.raises(UserError, match="outside 0..1"):
        data_lib.sample_tiny_set(np.array([0, 1, 2]), 1, seed=0, num_classes=2)


def test_load_tiny_set_decodes_the_chosen_images(class_folder):
    data, indices = data_lib.load_tiny_set(f"folder:{class_folder}", 3, seed=4, num_classes=3, image_size=32,
                                           balanced=True)
    assert sorted(data.labels.tolist()) == [0, 1, 2] and len(indices) == 3
    full = data_lib.load_source(f"folder:{class_folder}", image_size=32)
    np.testing.assert_array_equal(full.images[indices], data.images)


# --------------------------------------------------------------------------- real data

def test_imagenet_sample_flat_folder_at_cifar_size(shared_data):
    root = shared_data / "imagenet_sample"
    if not (root / "labels.csv").is_file():
        missing(f"{root} has no labels.csv")
    data = data_lib.out_of_domain(f"folder:{root}", 32)
    assert data.images.shape == (1000, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == list(range(1000)) and not data.labelled
    assert 40 < data.images.mean() < 200


def test_cifar_npz_loads_with_labels_in_range(shared_data):
    data = data_lib.load_source(f"npz:{shared_data / 'cifar10' / 'cifar10_test_exact.npz'}", image_size=32)
    assert data.images.shape[1:] == (32, 32, 3) and data.labels.max() == 9
    data_lib.check_fits(data, 32, 10, "cifar_resnet20")
