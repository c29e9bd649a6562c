"""``GET /playground`` in a real headless browser (Debian's chromium through playwright)
against the real server: upload an image, run two strategies, read both answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from decoding.testing import synthetic

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "Describe the image."
#: An image on which vcd (alpha 3) answers differently from plain decoding (measured on
#: the recipe-5 lab checkpoint: seeds 1003, 1004, 1013 of 1000-1019 differ).
SEED = 1004


def is_subsequence(words: list[str], of: list[str]) -> bool:
    it = iter(of)
    return all(w in it for w in words)


def test_page_and_assets_are_served_without_network_dependencies(served) -> None:  # noqa: ANN001
    page = httpx.get(served.url + "/playground", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("app.js", "style.css"):
        r = httpx.get(f"{served.url}/playground/{name}", timeout=30)
        assert r.status_code == 200 and len(r.text) > 100
        assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    assert "https://" not in page.text and "http://" not in page.text
    assert httpx.get(served.url + "/playground/secret.py").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by .ci/run")
def test_two_strategies_side_by_side_in_a_browser(served, tmp_path: Path) -> None:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    img = synthetic.sample(SEED)[0]
    png = tmp_path / "scene.png"
    img.save(png)
    expected = {}
    for name, decoding in (("none", {}), ("vcd", {"alpha": 3.0})):
        r = served.client().chat.completions.create(
            model=served.model,
            messages=synthetic.chat_messages(img, PROMPT),
            max_tokens=16,
            temperature=0,
            extra_body={"decoding": {"strategy": name, **decoding}},
        )
        expected[name] = r.choices[0].message.content

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            requests_out: list[str] = []
            page.on("request", lambda req: requests_out.append(req.url))
            page.goto(served.url + "/playground")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            page.set_input_files("#image", str(png))
            page.wait_for_selector("#drop.has-image")
            page.fill("#prompt", PROMPT)
            page.fill("#max-tokens", "16")
            page.check("#tick-vcd")
            page.fill("fieldset[data-strategy=vcd] [data-param=alpha]", "3")
            page.click("#run")
            page.wait_for_selector("#status:text('done')", timeout=180_000)
            cards = page.query_selector_all("article.answer")
            got = {c.get_attribute("data-strategy"): c for c in cards}
            assert set(got) == {"none", "vcd"}
            for name, card in got.items():
                assert card.get_attribute("data-done") == "true"
                assert card.get_attribute("data-text") == expected[name]
                assert "error" not in (card.get_attribute("class") or "")
            stats = got["vcd"].query_selector(".stats").inner_text()
            assert "tokens" in stats and "x plain" in stats
            # Words that differ from the plain answer are highlighted; the others are a
            # common subsequence of both answers.
            assert expected["vcd"] != expected["none"], "pick an image where vcd differs"
            text = got["vcd"].query_selector(".text")
            marks = [m.inner_text() for m in text.query_selector_all("mark")]
            plain_words = text.evaluate(
                "t => [...t.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)"
                ".join('').split(/\\s+/).filter(Boolean)"
            )
            assert marks and all(m in expected["vcd"].split() for m in marks)
            assert is_subsequence(plain_words, expected["none"].split())
            assert len(plain_words) + len(marks) == len(expected["vcd"].split())
            out = ROOT / "build" / "playground.png"
            out.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    assert all(u.startswith(served.url) or u.startswith("data:") for u in requests_out)
