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


def test_classes_named_by_words_also_take_their_number_in_a_file_name(tmp_path):
    """Fashion-MNIST's classes ("T-shirt/top", ...) cannot be written in a file name: 0_a.png means the
    first class, as the data set numbers them; a number past the last class is still refused."""
    names = ["T-shirt/top", "Trouser", "Pullover"]
    for name in ("0_a", "Trouser_b", "7_c"):
        Image.new("L", (8, 8)).save(tmp_path / f"{name}.png")
    with pytest.raises(SsvaeError) as error:
        read_folder(tmp_path, class_names=names, log=lambda *a: None)
    assert "7_c.png" in str(error.value) and "0_a.png" not in str(error.value)
    (tmp_path / "7_c.png").unlink()
    images = read_folder(tmp_path, FolderOptions(label_pattern=r"(?P<label>[^_]+)_.+"), class_names=names,
                         log=lambda *a: None)
    assert images.labels.tolist() == [0, 1]


def test_split_is_stratified_and_too_few_labels_say_how_to_fix_it(digits_folder, tmp_path):
    root, _ = digits_folder
    data = load_folder(root, cache_dir=tmp_path, fraction=0.2, log=lambda *a: None)
    assert data.num_classes == 10 and data.layout == "names"
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


def save_grey(path, level=0, size=(8, 8)):
    """A small grey PNG (or whatever the suffix says), its folders made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, level).save(path)


def quiet(*args):
    pass


def test_subfolder_layout_labels_by_subfolder_and_reads_the_unlabelled_one_as_unlabelled(tmp_path):
    for name, count in (("dog", 2), ("cat", 3), ("unlabelled", 4)):
        for n in range(count):
            save_grey(tmp_path / name / f"img{n}.png", 60 * n)
    images = read_folder(tmp_path, FolderOptions(layout="subfolders"), log=quiet)
    assert images.class_names == ["cat", "dog"]
    by_folder = {}
    for path, label in zip(images.paths, images.labels):
        by_folder.setdefault(path.parent.name, set()).add(int(label))
    assert by_folder == {"cat": {0}, "dog": {1}, "unlabelled": {-1}}
    # Another name for the unlabelled subfolder makes "unlabelled" a class like the others.
    renamed = read_folder(tmp_path, FolderOptions(layout="subfolders", unlabelled_folder="none"), log=quiet)
    assert renamed.class_names == ["cat", "dog", "unlabelled"] and (renamed.labels >= 0).all()


def test_subfolder_classes_that_are_numbers_are_ordered_as_numbers(tmp_path):
    for name in ("10", "9", "2"):
        save_grey(tmp_path / name / "a.png")
    assert read_folder(tmp_path, log=quiet).class_names == ["2", "9", "10"]  # auto: subfolders


def test_auto_layout_picks_subfolders_only_when_every_image_is_one_down_and_no_name_is_a_label(tmp_path):
    options = FolderOptions()
    cases = {
        "classes": (["cat/a.png", "dog/b.png", "unlabelled/c.png"], "subfolders"),
        "one_on_top": (["cat/a.png", "dog/b.png", "stray.png"], "names"),
        "named_in_batches": (["batch1/3_a.png", "batch2/b.png"], "names"),
        "two_down": (["cat/young/a.png", "dog/b.png"], "names"),
        "flat": (["3_a.png", "b.png"], "names"),
    }
    for case, (files, expected) in cases.items():
        for file in files:
            save_grey(tmp_path / case / file)
        paths = folder_module.list_images(tmp_path / case)
        layout, why = folder_module.resolve_layout(tmp_path / case, paths, options)
        assert layout == expected, (case, why)
    layout, why = folder_module.resolve_layout(tmp_path / "flat", [], FolderOptions(labels_csv="labels.csv"))
    assert (layout, why) == ("csv", "--labels-csv was given")
    # Training says in one line which layout it read and why.
    said = []
    with pytest.raises(SsvaeError):  # one image per class is too few; the line comes first
        load_folder(tmp_path / "classes", cache_dir=tmp_path / "cache", log=said.append)
    assert said[0] == (f"{tmp_path / 'classes'}: read in layout 'subfolders' (one subfolder per class, unlabelled "
                       f"images in unlabelled/) as every image sits one subfolder down and no file name matches "
                       f"--label-pattern")


def test_a_subfolder_class_with_one_image_is_named_with_its_subfolder(tmp_path):
    for n in range(3):
        save_grey(tmp_path / "cat" / f"{n}.png")
    save_grey(tmp_path / "dog" / "only.png")
    with pytest.raises(SsvaeError) as error:
        load_folder(tmp_path, cache_dir=tmp_path / "cache", log=quiet)
    message = str(error.value)
    assert f"class 'dog' has 1 labelled image(s) (in {tmp_path / 'dog'}); at least 3 are needed" in message
    assert "add more images to that subfolder" in message


def test_an_explicit_subfolder_layout_refuses_images_outside_the_class_subfolders(tmp_path):
    save_grey(tmp_path / "cat" / "a.png")
    save_grey(tmp_path / "stray.png")
    with pytest.raises(SsvaeError, match=r"1 sit in the folder itself \(stray.png\); move them"):
        read_folder(tmp_path, FolderOptions(layout="subfolders"), log=quiet)


def test_a_subfolder_layout_with_no_class_subfolder_says_how_to_label(tmp_path):
    save_grey(tmp_path / "unlabelled" / "a.png")
    with pytest.raises(SsvaeError, match="no image sits in a class subfolder"):
        load_folder(tmp_path, cache_dir=tmp_path / "cache", log=quiet)


def test_validation_and_test_folders_in_the_subfolder_layout(tmp_path):
    for split, count in (("train", 3), ("val", 1), ("test", 2)):
        for name, level in (("cat", 0), ("dog", 255)):
            for n in range(count):
                save_grey(tmp_path / split / name / f"{n}.png", level)
    save_grey(tmp_path / "train" / "unlabelled" / "u.png")
    data = load_folder(tmp_path / "train", val_folder=tmp_path / "val", test_folder=tmp_path / "test",
                       cache_dir=tmp_path / "cache", log=quiet)
    assert data.class_names == ["cat", "dog"] and sorted(data.train_labels.tolist()) == [-1, 0, 0, 0, 1, 1, 1]
    assert data.val_labels.tolist() == [0, 1] and sorted(data.test_labels.tolist()) == [0, 0, 1, 1]
    np.testing.assert_array_equal(data.val_images.max(axis=1), [0, 255])  # each image kept with its class
    save_grey(tmp_path / "val" / "unlabelled" / "u.png")
    with pytest.raises(SsvaeError, match=r"--val .*: every image there needs a class subfolder \(not unlabelled/\)"):
        load_folder(tmp_path / "train", val_folder=tmp_path / "val", cache_dir=tmp_path / "cache", log=quiet)


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_layout_labels_listed_files_and_leaves_empty_labels_and_unlisted_files_unlabelled(tmp_path):
    folder = tmp_path / "shots"
    for name in ("a.png", "b.png", "c.png", "d.png", "sub/e.png", "sub/f.png"):
        save_grey(folder / name)
    labels = write_csv(tmp_path / "labels.csv",
                       "file,label\n"
                       "a.png,zebra\n"
                       "b.png,\n"  # an empty label: unlabelled
                       f"{folder / 'c.png'},ant\n"  # an absolute path
                       "sub/e.png,ant\n"
                       "./a.png,zebra\n")  # listed twice with the same label: fine
    images = read_folder(folder, FolderOptions(labels_csv=str(labels)), log=quiet)  # auto: csv
    assert images.class_names == ["ant", "zebra"]
    got = {str(p.relative_to(folder)): int(y) for p, y in zip(images.paths, images.labels)}
    assert got == {"a.png": 1, "b.png": -1, "c.png": 0, "d.png": -1, "sub/e.png": 0, "sub/f.png": -1}


def test_csv_rows_naming_missing_files_are_listed_with_their_lines(tmp_path):
    folder = tmp_path / "shots"
    save_grey(folder / "a.png")
    save_grey(folder / "b.png")
    labels = write_csv(tmp_path / "labels.csv", "file,label\na.png,1\ngone.png,2\nb.png,1\nnotes.txt,3\n")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(SsvaeError) as error:
        read_folder(folder, FolderOptions(labels_csv=str(labels)), log=quiet)
    message = str(error.value)
    assert f"--labels-csv {labels}: 2 of 4 rows do not name an image of {folder}" in message
    assert f"line 3: gone.png: no such file in {folder}" in message
    assert "line 5: notes.txt: not an image file" in message and "--skip-bad" in message
    said = []
    images = read_folder(folder, FolderOptions(labels_csv=str(labels), skip_bad=True), log=said.append)
    assert images.labels.tolist() == [0, 0] and "ignoring 2 of 4 rows" in said[0] and "gone.png" in said[0]


def test_a_csv_without_a_label_column_says_which_columns_it_needs(tmp_path):
    save_grey(tmp_path / "shots" / "a.png")
    labels = write_csv(tmp_path / "labels.csv", "file,class\na.png,cat\n")
    with pytest.raises(SsvaeError) as error:
        read_folder(tmp_path / "shots", FolderOptions(labels_csv=str(labels)), log=quiet)
    message = str(error.value)
    assert message.startswith(f"--labels-csv {labels}: needs columns named 'file' and 'label'")
    assert "has 'file', 'class' (no 'label')" in message


def test_a_file_given_two_labels_in_the_csv_names_both_lines(tmp_path):
    save_grey(tmp_path / "shots" / "a.png")
    labels = write_csv(tmp_path / "labels.csv", "file,label\na.png,cat\nb.png,\na.png,dog\n")
    (tmp_path / "shots" / "b.png").write_bytes((tmp_path / "shots" / "a.png").read_bytes())
    with pytest.raises(SsvaeError, match=r"1 file\(s\) are listed more than once with different labels:\n"
                                         r"  a.png: 'cat' \(line 2\), 'dog' \(line 4\)"):
        read_folder(tmp_path / "shots", FolderOptions(labels_csv=str(labels)), log=quiet)


def test_an_unreadable_or_missing_csv_is_named(tmp_path):
    save_grey(tmp_path / "shots" / "a.png")
    for content, expected in ((None, "no such file"), (b"file,label\na.png,\xff\xfe\n", "not UTF-8 text"),
                              (b"", "is empty; its first row must be the header file,label"),
                              (b'file,label\n"a.png,cat\n', "not a readable CSV")):
        labels = tmp_path / "labels.csv"
        labels.unlink(missing_ok=True)
        if content is not None:
            labels.write_bytes(content)
        with pytest.raises(SsvaeError) as error:
            read_folder(tmp_path / "shots", FolderOptions(labels_csv=str(labels)), log=quiet)
        assert str(error.value).startswith(f"--labels-csv {labels}: ") and expected in str(error.value)


def test_layout_options_that_contradict_each_other_are_refused():
    with pytest.raises(SsvaeError, match="--layout csv: give the CSV"):
        FolderOptions(layout="csv").validate()
    with pytest.raises(SsvaeError, match="only with --layout csv"):
        FolderOptions(layout="subfolders", labels_csv="labels.csv").validate()
    with pytest.raises(SsvaeError, match="--unlabelled-folder 'a/b': must be the name of one subfolder"):
        FolderOptions(unlabelled_folder="a/b").validate()


def test_changing_the_layout_or_the_csv_decodes_the_folder_again(tmp_path, monkeypatch):
    for n in range(6):
        save_grey(tmp_path / "shots" / ("cat" if n < 3 else "dog") / f"{n}.png", 40 * n)
    folder, cache = tmp_path / "shots", tmp_path / "cache"
    labels = write_csv(tmp_path / "labels.csv", "file,label\n" + "".join(f"cat/{n}.png,x\n" for n in range(3))
                       + "".join(f"dog/{n}.png,y\n" for n in range(3, 6)))
    first = load_folder(folder, cache_dir=cache, log=quiet)
    by_csv = load_folder(folder, FolderOptions(labels_csv=str(labels)), cache_dir=cache, log=quiet)
    assert first.class_names == ["cat", "dog"] and by_csv.class_names == ["x", "y"]
    monkeypatch.setattr(folder_module, "read_image", lambda *a: pytest.fail("decoded again"))
    assert load_folder(folder, FolderOptions(labels_csv=str(labels)), cache_dir=cache, log=quiet).class_names == [
        "x", "y"]
    monkeypatch.undo()
    write_csv(labels, labels.read_text().replace(",y", ",z"))
    assert load_folder(folder, FolderOptions(labels_csv=str(labels)), cache_dir=cache,
                       log=quiet).class_names == ["x", "z"]
