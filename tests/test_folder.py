"""A folder of the user's own images as data: labels from file names, and every bad file named."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from ssvae.data import folder as folder_module
from ssvae.data.folder import FolderOptions, load_folder, read_folder
from ssvae.errors import SsvaeError


def digit_png(path, pixels):
    """An 8x8 scikit-learn digit (levels 0..16) as an 8-bit grey PNG."""
    Image.fromarray((pixels.reshape(8, 8) * 255 / 16).round().astype(np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """200 real digits: 5 per class named '{label}_{n}.png', the other 150 with plain names."""
    digits = load_digits()
    root = tmp_path_factory.mktemp("digits")
    labelled = {k: 0 for k in range(10)}
    for n in range(200):
        label = int(digits.target[n])
        if labelled[label] < 5:
            labelled[label] += 1
            digit_png(root / f"{label}_{n:04d}.png", digits.data[n])
        else:
            digit_png(root / f"scan{n:04d}.PNG", digits.data[n])
    return root, digits


def test_labels_come_from_file_names_and_the_rest_are_unlabelled(digits_folder):
    root, digits = digits_folder
    images = read_folder(root, log=lambda *a: None)
    assert images.class_names == [str(k) for k in range(10)]
    assert images.image_shape == (8, 8) and images.images.shape == (200, 64)
    assert (images.labels >= 0).sum() == 50 and (images.labels == -1).sum() == 150
    for path, label, row in zip(images.paths, images.labels, images.images):
        n = int(path.stem.split("_")[-1].removeprefix("scan"))
        assert label == (int(path.stem.split("_")[0]) if "_" in path.stem else -1)
        np.testing.assert_array_equal(row, (digits.data[n] * 255 / 16).round())  # pixels kept exactly


def test_class_names_that_are_not_digits_map_to_contiguous_indices(tmp_path):
    for name in ("cat-1", "cat-2", "dog-1", "zebra-1", "photo"):
        Image.new("RGB", (4, 3), (200, 10, 10)).save(tmp_path / f"{name}.jpg")
    options = FolderOptions(label_pattern=r"(?P<label>[a-z]+)-\d+", channels=3)
    images = read_folder(tmp_path, options, log=lambda *a: None)
    assert images.class_names == ["cat", "dog", "zebra"]
    assert sorted(images.labels.tolist()) == [-1, 0, 0, 1, 2]
    assert images.image_shape == (3, 4, 3) and images.images.shape == (5, 36)


def test_images_are_resized_to_the_most_common_size(tmp_path):
    for n in range(3):
        Image.new("L", (10, 6), 255).save(tmp_path / f"1_{n}.png")
    Image.new("RGBA", (20, 12), (0, 0, 0, 255)).save(tmp_path / "0_big.png")
    Image.new("P", (10, 6)).save(tmp_path / "0_palette.gif")
    said = []
    images = read_folder(tmp_path, log=said.append)
    assert images.image_shape == (6, 10) and images.images.shape == (5, 60)
    # The odd ones are named: nothing is changed silently.
    assert "resized 1 image(s) to 10x6" in said[0] and "0_big.png" in said[0]
    assert "1 from mode P" in said[0] and "1 from mode RGBA" in said[0]
    assert read_folder(tmp_path, FolderOptions(image_size=(5, 4)), log=lambda *a: None).image_shape == (4, 5)


def write_bad_files(root):
    """One of each kind of unusable file, beside two good ones; returns {file name: what the reason says}."""
    Image.new("L", (8, 8), 128).save(root / "1_good.png")
    Image.new("L", (8, 8), 0).save(root / "2_good.png")
    (root / "3_empty.png").write_bytes(b"")
    (root / "4_text.jpg").write_text("this is not an image")
    whole = (root / "1_good.png").read_bytes()
    (root / "5_truncated.png").write_bytes(whole[: len(whole) // 2])
    return {"3_empty.png": "empty", "4_text.jpg": "not an image", "5_truncated.png": "truncated"}


def test_every_bad_file_is_named_with_its_reason_before_anything_trains(tmp_path):
    expected = write_bad_files(tmp_path)
    with pytest.raises(SsvaeError) as error:
        read_folder(tmp_path, log=lambda *a: None)
    message = str(error.value)
    assert "3 of 5 image files cannot be used" in message and "--skip-bad" in message
    for name, reason in expected.items():
        line = next(line for line in message.splitlines() if name in line)
        assert reason in line


def test_skip_bad_leaves_them_out_and_says_how_many(tmp_path):
    write_bad_files(tmp_path)
    said = []
    images = read_folder(tmp_path, FolderOptions(skip_bad=True), log=said.append)
    assert [p.name for p in images.paths] == ["1_good.png", "2_good.png"]
    assert "skipping 3 of 5" in said[0] and "3_empty.png" in said[0]


def test_a_long_list_of_bad_files_shows_the_first_twenty_and_a_count(tmp_path):
    for n in range(25):
        (tmp_path / f"{n:02d}_x.png").write_bytes(b"")
    with pytest.raises(SsvaeError) as error:
        read_folder(tmp_path, log=lambda *a: None)
    assert "00_x.png" in str(error.value) and "... and 5 more" in str(error.value)
    assert "24_x.png" not in str(error.value)


def test_empty_and_unlabelled_folders_are_refused_with_a_way_out(tmp_path):
    with pytest.raises(SsvaeError, match="holds no image files"):
        read_folder(tmp_path, log=lambda *a: None)
    with pytest.raises(SsvaeError, match="no such folder"):
        read_folder(tmp_path / "missing", log=lambda *a: None)
    Image.new("L", (8, 8)).save(tmp_path / "holiday.png")
    with pytest.raises(SsvaeError, match="no file name carries a label"):
        load_folder(tmp_path, cache_dir=tmp_path / "cache", log=lambda *a: None)


def test_labels_a_checkpoint_does_not_know_are_bad(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "3_a.png")
    Image.new("L", (8, 8)).save(tmp_path / "12_b.png")
    with pytest.raises(SsvaeError) as error:
        read_folder(tmp_path, class_names=[str(k) for k in range(10)], log=lambda *a: None)
    assert "12_b.png" in str(error.value) and "not one of the classes" in str(error.value)


def test_split_is_stratified_and_too_few_labels_say_how_to_fix_it(digits_folder, tmp_path):
    root, _ = digits_folder
    data = load_folder(root, cache_dir=tmp_path, fraction=0.2, log=lambda *a: None)
    assert data.num_classes == 10 and data.likelihood in ("bernoulli", "gaussian")
    assert np.bincount(data.val_labels, minlength=10).tolist() == [1] * 10
    assert np.bincount(data.test_labels, minlength=10).tolist() == [1] * 10
    assert (data.train_labels >= 0).sum() == 30 and (data.train_labels == -1).sum() == 150
    few = tmp_path / "few"
    few.mkdir()
    for n in range(2):
        Image.new("L", (8, 8)).save(few / f"7_{n}.png")
    with pytest.raises(SsvaeError, match=r"class '7' has 2 labelled image\(s\); at least 3 are needed"):
        load_folder(few, cache_dir=tmp_path, log=lambda *a: None)


def test_a_folder_is_decoded_once_and_then_read_from_the_cache(digits_folder, tmp_path, monkeypatch):
    root, _ = digits_folder
    first = load_folder(root, cache_dir=tmp_path, log=lambda *a: None)
    monkeypatch.setattr(folder_module, "read_image", lambda *a: pytest.fail("decoded again"))
    again = load_folder(root, cache_dir=tmp_path, log=lambda *a: None)
    np.testing.assert_array_equal(first.train_images, again.train_images)
    np.testing.assert_array_equal(first.test_labels, again.test_labels)


names = st.text(alphabet="abc_0123456789.-", min_size=1, max_size=12)
suffixes = st.sampled_from([".png", ".jpg", ".JPEG", ".bmp", ".gif", ".tif", ".txt"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(names, suffixes, st.binary(max_size=300)), min_size=0, max_size=6),
       good=st.integers(0, 3))
def test_random_bytes_and_names_either_load_or_stop_with_the_clear_message(tmp_path_factory, files, good):
    root = tmp_path_factory.mktemp("random")
    for n in range(good):
        Image.new("L", (6, 6), 40 * n).save(root / f"{n}_ok.png")
    for name, suffix, data in files:
        (root / f"{name}{suffix}").write_bytes(data)
    try:
        images = read_folder(root, log=lambda *a: None)
    except SsvaeError as error:  # the only way out but success: a message that names the folder
        assert str(root) in str(error)
    else:
        assert len(images.paths) == len(images.labels) == len(images.images) >= 1


def test_parallel_decoding_keeps_the_files_in_order():
    items = list(range(100))
    assert folder_module._parallel(lambda n: n * n, items, workers=3, chunk=7) == [n * n for n in items]
