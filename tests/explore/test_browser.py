"""The explorer in a real browser (headless Chromium): search, image view, disagreements,
zero-shot and the static folder opened from disk."""

from urllib.parse import quote

import pytest
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import clip_ping
from clip_ping.evaluation.datasets import load_eval_dataset
from clip_ping.evaluation.features import encode_images, encode_texts
from clip_ping.evaluation.ranking import negatives_outranking, pad_positives

WAIT = 30


def wait_for(driver, css: str, count: int = 1):
    """The elements matching ``css`` once there are at least ``count`` of them."""
    WebDriverWait(driver, WAIT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)
    return driver.find_elements(By.CSS_SELECTOR, css)


def open_page(driver, url: str):
    driver.get(url)
    WebDriverWait(driver, WAIT).until(
        lambda d: d.execute_script("return document.body.dataset.ready")
    )
    assert driver.find_element(By.ID, "error").text == ""


def first_place_caption(run, dataset) -> tuple[str, int]:
    """A caption of the set whose own image ``run`` ranks first, and that image, found with
    the evaluation's own encoders and ranking (not the explorer's code)."""
    model, preprocess, tokenizer = clip_ping.load(run)
    data = load_eval_dataset(dataset, preprocess)
    images = encode_images(model, data.images)
    texts = encode_texts(model, tokenizer, data.captions)
    own = torch.tensor(data.caption_image)
    counts = negatives_outranking(texts, images, pad_positives([[i] for i in own.tolist()]))
    scores = texts @ images.T
    margins = []
    for row in torch.nonzero(counts == 0).flatten().tolist():
        others = scores[row].clone()
        others[own[row]] = float("-inf")
        margins.append((float(scores[row, own[row]] - others.max()), row))
    assert margins, f"{run.name} ranks no caption of the set first: train it longer"
    row = max(margins)[1]
    return data.captions[row], int(own[row])


def test_a_typed_caption_shows_its_image_first_side_by_side(browser, server, explore_runs):
    sharp, blurry = explore_runs["runs"]
    caption, image = first_place_caption(sharp, explore_runs["dataset"])
    open_page(browser, server.url)
    box = browser.find_element(By.ID, "query")
    box.send_keys(caption, Keys.ENTER)
    columns = wait_for(browser, "#results section.run", 2)
    assert [c.get_attribute("data-run") for c in columns] == ["sharp", "blurry"]
    # Side by side: the two runs' columns share a row of the page.
    assert columns[0].location["y"] == columns[1].location["y"]
    assert columns[0].location["x"] < columns[1].location["x"]
    first = columns[0].find_elements(By.CSS_SELECTOR, "li.hit")[0]
    assert int(first.get_attribute("data-image")) == image
    assert "correct" in first.get_attribute("class").split()
    assert columns[0].find_element(By.CSS_SELECTOR, ".rank").get_attribute("data-rank") == "1"
    # Every hit shows its image, served by the explorer.
    for img in columns[1].find_elements(By.CSS_SELECTOR, "li.hit img"):
        WebDriverWait(browser, WAIT).until(
            lambda d, i=img: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", i
            )
        )
    assert len(columns[1].find_elements(By.CSS_SELECTOR, "li.hit")) == 8

    first.click()
    runs = wait_for(browser, "#image-runs section.run", 2)
    assert browser.current_url.endswith(f"#image={image}")
    for run in runs:
        assert len(run.find_elements(By.CSS_SELECTOR, "ol.captions li")) == 8
    # The image's own captions head the view; a run's caption list marks exactly those.
    own = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".hero li")]
    assert caption in own
    for run in runs:
        for li in run.find_elements(By.CSS_SELECTOR, "ol.captions li"):
            text = li.text.rsplit(" ", 1)[0]
            assert ("correct" in li.get_attribute("class").split()) == (text in own)


def test_disagreement_counts_are_the_recalls_of_clip_ping_eval(browser, server, explore_runs):
    open_page(browser, server.url + "#disagreements")
    wait_for(browser, "#counts tr[data-right]", 2)
    total = int(browser.find_element(By.ID, "total").text)
    records = explore_runs["eval"]
    assert total == len(load_eval_dataset(explore_runs["dataset"], lambda x: x).captions)
    right = {}
    for name, record in records.items():
        cell = browser.find_element(By.CSS_SELECTOR, f"#counts tr[data-right='{name}'] .count")
        right[name] = int(cell.text)
        assert right[name] == round(record["metrics"]["text_to_image_R@1"] * total)
    pair = {
        tuple(row.get_attribute("data-pair").split("|")): int(
            row.find_element(By.CSS_SELECTOR, ".count").text
        )
        for row in browser.find_elements(By.CSS_SELECTOR, "#counts tr[data-pair]")
    }
    assert pair[("sharp", "blurry")] - pair[("blurry", "sharp")] == right["sharp"] - right["blurry"]
    assert right["sharp"] > right["blurry"]  # eight epochs against one
    # The list starts with the most disputed query: its ranks differ the most.
    rows = wait_for(browser, "#disagreements .row", 2)
    spans = [
        [int(b.text.rsplit(": ", 1)[1]) for b in row.find_elements(By.CSS_SELECTOR, ".badge")]
        for row in rows
    ]
    spread = [max(r) / min(r) for r in spans]
    assert spread[0] == max(spread) and spread[0] > 1


def test_zero_shot_page_lists_every_class(browser, server, explore_runs):
    open_page(browser, server.url + "#zeroshot")
    rows = wait_for(browser, "#per-class tr", 2)
    classnames = (explore_runs["dataset"].parent / "classnames.txt").read_text().split("\n")
    labels = load_eval_dataset(explore_runs["dataset"], lambda x: x).labels
    assert len(rows) - 1 == len(set(labels))
    shown = {row.find_elements(By.TAG_NAME, "td")[0].text for row in rows[1:]}
    assert shown == {classnames[label] for label in set(labels)}


@pytest.mark.parametrize("copy_images", [True, False])
def test_the_static_folder_opens_from_disk(browser, explorer, explore_runs, tmp_path, copy_images):
    from clip_ping.explore import write_static

    index = write_static(explorer, tmp_path / "static", copy_images=copy_images)
    copied = len(list((tmp_path / "static" / "images").iterdir()))
    assert copied == (len(explorer.data) if copy_images else 0)
    caption, image = first_place_caption(explore_runs["runs"][0], explore_runs["dataset"])
    open_page(browser, index.as_uri())
    box = browser.find_element(By.ID, "query")
    box.send_keys(caption[: len(caption) // 2])
    matches = wait_for(browser, "#matches li")
    assert all(caption[: len(caption) // 2] in m.text for m in matches)
    assert caption in [m.text for m in matches]
    browser.get(index.as_uri() + "#search=" + quote(caption))
    browser.refresh()
    columns = wait_for(browser, "#results section.run", 2)
    first = columns[0].find_elements(By.CSS_SELECTOR, "li.hit")[0]
    assert int(first.get_attribute("data-image")) == image
    img = first.find_element(By.TAG_NAME, "img")
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img
        )
    )
    open_page(browser, index.as_uri() + "#disagreements")
    assert wait_for(browser, "#counts tr[data-right]", 2)


@pytest.mark.parametrize("page", ["", "#disagreements", "#zeroshot"])
def test_no_page_requests_anything_but_the_server(browser, server, page):
    open_page(browser, server.url + page)
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and all(url.startswith(server.url) for url in urls), urls


def test_the_image_view_shows_the_teachers_neighbours(
    browser, explore_runs, shapes_banks, small_corpus, tmp_path
):
    import json
    from urllib.request import urlopen

    import numpy as np

    from clip_ping.bank import Bank
    from clip_ping.explore import SetSpec, open_explorer, start_server, write_static

    explorer = open_explorer(
        explore_runs["runs"],
        SetSpec(str(explore_runs["dataset"])),
        image_bank=str(shapes_banks / "image"),
        text_bank=str(shapes_banks / "text"),
        train_data=str(small_corpus / "train.csv"),
    )
    server = start_server(explorer)
    try:
        with urlopen(server.url + "api/image?i=2") as response:
            view = json.loads(response.read())
        image_nn, image_sim = Bank(shapes_banks / "image").neighbors()
        text_nn, _ = Bank(shapes_banks / "text").neighbors()
        nearest = view["nearest_training"]
        assert len(nearest) == 3
        sims = [n["similarity"] for n in nearest]
        assert sims == sorted(sims, reverse=True) and 0 < sims[0] <= 1.001
        for near in nearest:
            rows = [m["row"] for m in near["image_neighbours"]]
            assert rows == np.asarray(image_nn[near["row"]][:4]).tolist()
            assert [m["similarity"] for m in near["image_neighbours"]] == [
                round(float(s), 4) for s in image_sim[near["row"]][:4]
            ]
            captions = [m["row"] for m in near["caption_neighbours"]]
            assert captions == np.asarray(text_nn[near["row"]][:4]).tolist()
        open_page(browser, server.url + "#image=2")
        figures = wait_for(browser, "#teacher figure img", 3 + 3 * 4)
        for img in figures:
            WebDriverWait(browser, WAIT).until(
                lambda d, i=img: d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", i
                )
            )
        assert nearest[0]["caption"] in browser.find_element(By.ID, "teacher").text
        # The static folder carries the neighbours and copies their training images.
        index = write_static(explorer, tmp_path / "static")
        open_page(browser, index.as_uri() + "#image=2")
        figures = wait_for(browser, "#teacher figure img", 3 + 3 * 4)
        for img in figures:
            assert img.get_attribute("src").startswith(index.parent.as_uri() + "/images/train-")
            WebDriverWait(browser, WAIT).until(
                lambda d, i=img: d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", i
                )
            )
    finally:
        server.shutdown()
        server.server_close()


def test_a_broken_address_shows_an_error_and_the_page_goes_on(browser, server):
    browser.get(server.url + "#search=%E0%A4%A")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "error").text)
    assert "URI" in browser.find_element(By.ID, "error").text
    browser.execute_script("location.hash = '#disagreements'")
    assert wait_for(browser, "#counts tr[data-right]", 2)
    assert browser.find_element(By.ID, "error").text == ""
