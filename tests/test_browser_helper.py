"""Quick checks that tests/browser.py really renders pages and reports their errors."""

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from browser import check_page, find_chromium


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome, $CHROMIUM)")
    return path


def _png_data_uri(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.browser
def test_valid_png_renders(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "ok.html"
    page.write_text(f'<!doctype html><html><body><img src="{_png_data_uri(7, 5)}"></body></html>')
    check = check_page(page, timeout=20)
    assert check.errors == []
    assert len(check.images) == 1
    image = check.images[0]
    assert (image["natural_width"], image["natural_height"]) == (7, 5)
    assert image["complete"] is True
    assert image["src_prefix"].startswith("data:image/png;base64,")


@pytest.mark.browser
def test_corrupt_image_and_console_error(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    corrupt = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    page.write_text(
        f'<!doctype html><html><body><img src="{corrupt}">'
        '<script>console.error("boom")</script></body></html>'
    )
    check = check_page(page, timeout=20)
    assert len(check.images) == 1
    assert check.images[0]["natural_width"] == 0
    assert any("boom" in error for error in check.errors), check.errors
