"""How fast a folder of tens of thousands of images loads: first (decoded) and again (cached).

Writes MNIST's training images as PNG files named like a user's folder (100 labelled by file name,
the rest plain), then times ``load_folder`` on it twice with an empty cache directory:

    python benchmarks/folder_loading.py [--images 50000]

Prints a table and writes benchmarks/results/folder_loading.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ssvae.checkpoint import atomic_write_json
from ssvae.data.folder import FolderOptions, load_folder, read_folder
from ssvae.data.mnist import load_mnist

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args()
    mnist = load_mnist(log=lambda *a: None)
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        folder.mkdir()
        seen = np.zeros(10, dtype=int)
        for n, (pixels, label) in enumerate(zip(mnist.train_images[:args.images], mnist.train_labels)):
            labelled = seen[label] < 10
            seen[label] += labelled
            name = f"{label}_{n:05d}.png" if labelled else f"img{n:05d}.png"
            Image.fromarray(pixels.reshape(28, 28)).save(folder / name)
        start = time.perf_counter()
        read_folder(folder, FolderOptions(), log=lambda *a: None, threads=1)
        one_thread = time.perf_counter() - start
        start = time.perf_counter()
        data = load_folder(folder, cache_dir=cache, log=lambda *a: None)
        first = time.perf_counter() - start
        start = time.perf_counter()
        load_folder(folder, cache_dir=cache, log=lambda *a: None)
        cached = time.perf_counter() - start
    row = {"images": args.images, "cores": os.cpu_count(), "decode_one_thread_s": one_thread,
           "first_load_s": first, "cached_load_s": cached, "labelled": int((data.train_labels >= 0).sum())}
    print("| images | decode, 1 thread | first load (decode + split + cache) | cached load |")
    print("|---|---|---|---|")
    print(f"| {args.images:,} | {one_thread:.1f} s | {first:.1f} s | {cached:.2f} s |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "folder_loading.json", row)
    print(f"wrote {RESULTS / 'folder_loading.json'}")


if __name__ == "__main__":
    main()
