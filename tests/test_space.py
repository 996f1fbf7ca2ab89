"""The Spaces demo: the template and its upload (recorded HfApi), input checks, the overlay geometry, and the app
itself driven in headless Chromium, its answers checked against direct `model.generate` calls."""

from __future__ import annotations

import io
import math
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from hf_tokenprune import available_selectors, get_pruned_model
from hf_tokenprune.cli import main
from hf_tokenprune.hub import GRADIO_SDK_VERSION, push_space, render_space
from hf_tokenprune.space import (
    InputError,
    SpaceArguments,
    SpaceModel,
    budget_from,
    bundled_testbed,
    kept_token_overlay,
    read_image,
    token_grid,
)

SPACE_ID = "someone/pruning-space"
MODEL_ID = "someone/tiny-pruned-qwen"
IN_CI = bool(os.environ.get("CI"))
# Where a copy of the browser test's screenshot goes (the README's docs/space.png is made this way).
SCREENSHOT_COPY = os.environ.get("HF_TOKENPRUNE_SPACE_SCREENSHOT")


def kept_by_rule(budget: float | int, total: int) -> int:
    """The budget contract, written out independently: a float keeps max(1, round(b * N)), halves up; an int K
    keeps min(K, N)."""
    if isinstance(budget, float):
        return max(1, math.floor(budget * total + 0.5))
    return min(budget, total)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ---------------------------------------------------------------------------------------------- template and push
@pytest.mark.parametrize("model", ["testbed", MODEL_ID])
def test_rendered_space_has_the_space_layout(model):
    files = render_space(model)
    assert set(files) == {"app.py", "README.md", "requirements.txt"}
    metadata = front_matter(files["README.md"].decode("utf-8"))
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert metadata["sdk_version"] == GRADIO_SDK_VERSION
    assert metadata["models"] == ([] if model == "testbed" else [MODEL_ID])
    app = files["app.py"].decode("utf-8")
    compile(app, "app.py", "exec")
    assert f'MODEL = "{model}"' in app and "MODEL = None" not in app
    assert "hf-tokenprune[space]" in files["requirements.txt"].decode("utf-8")


def test_push_space_creates_a_gradio_space_and_uploads_the_template(hub_calls):
    commit = push_space(SPACE_ID, MODEL_ID, token="hf_secret", private=True)

    assert commit.commit_url == f"https://huggingface.co/{SPACE_ID}/commit/abc123"
    assert [call[0] for call in hub_calls] == ["create_repo", "create_commit"]
    assert hub_calls[0] == (
        "create_repo",
        SPACE_ID,
        {"repo_type": "space", "space_sdk": "gradio", "private": True, "exist_ok": True, "token": "hf_secret"},
    )
    _, repo_id, kwargs = hub_calls[1]
    assert repo_id == SPACE_ID and kwargs["repo_type"] == "space" and kwargs["token"] == "hf_secret"
    assert kwargs["uploaded"] == render_space(MODEL_ID)


def test_cli_push_space(hub_calls, capsys):
    assert main(["push-space", "--repo-id", SPACE_ID, "--commit-message", "demo"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"https://huggingface.co/{SPACE_ID}/commit/abc123",
        f"https://huggingface.co/spaces/{SPACE_ID}",
    ]
    assert hub_calls[0][2]["private"] is None and hub_calls[0][2]["repo_type"] == "space"
    assert hub_calls[1][2]["commit_message"] == "demo"
    assert hub_calls[1][2]["uploaded"] == render_space("testbed")


@pytest.mark.parametrize(
    "repo_id, model, match",
    [("no-namespace", "testbed", "repo_id"), (SPACE_ID, "/home/me/pruned", "`model`"), (SPACE_ID, "", "`model`")],
    ids=["bad-repo-id", "local-model", "empty-model"],
)
def test_bad_push_space_fails_before_any_network_call(hub_calls, repo_id, model, match):
    with pytest.raises(ValueError, match=match):
        push_space(repo_id, model)
    assert hub_calls == []


def test_space_command_arguments_are_checked():
    with pytest.raises(ValueError, match="port"):
        SpaceArguments(port=70000)
    with pytest.raises(ValueError, match="queue_size"):
        SpaceArguments(queue_size=0)


# ---------------------------------------------------------------------------------------------- input and overlay
def test_bad_input_gives_readable_errors(tmp_path):
    with pytest.raises(InputError, match="No image"):
        read_image(None)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    with pytest.raises(InputError, match="notes.png is not an image"):
        read_image(str(text_file))
    with pytest.raises(InputError, match="whole number"):
        budget_from(0.2, 2.5)
    with pytest.raises(InputError, match=r"fraction in \(0, 1\]"):
        budget_from(0.0, 0)
    assert budget_from(0.25, 0) == 0.25 and budget_from(0.25, 7) == 7


def test_large_image_is_shrunk_with_its_aspect(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (6000, 1500), (200, 30, 30)).save(path)
    image, note = read_image(str(path))
    assert image.size == (2048, 512) and "6000 x 1500" in note


@pytest.fixture(scope="module")
def space_model():
    return SpaceModel.load("testbed")


@pytest.mark.parametrize("size", [(224, 224), (448, 224), (224, 448), (300, 251), (37, 900), (1600, 1200)])
def test_overlay_covers_every_token_cell_for_any_image_size(space_model, size):
    """The grid has as many cells as the image has visual tokens, dropped cells are dimmed and kept ones are not."""
    image = Image.new("RGB", size, (230, 230, 230))
    inputs = space_model.inputs(image, "what colour is the circle")
    model = space_model.model_for("uniform")
    rows, cols = token_grid(model, inputs)
    total = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    assert rows * cols == total
    keep = torch.zeros(total, dtype=torch.bool)
    keep[:: max(2, total // 5)] = True
    overlay = kept_token_overlay(image, (rows, cols), keep)
    cell_w, cell_h = overlay.width / cols, overlay.height / rows
    assert cell_w == cell_h and overlay.width == cols * cell_w
    for index in range(total):
        row, col = divmod(index, cols)
        centre = overlay.getpixel((int((col + 0.5) * cell_w), int((row + 0.5) * cell_h)))
        assert (centre[0] > 200) == bool(keep[index]), (index, centre)


def test_methods_are_every_method_the_model_can_run(space_model):
    assert sorted(space_model.methods) == sorted(available_selectors())  # testbed: every learned one is bundled


# ---------------------------------------------------------------------------------------------- in the browser
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    """(driver, base URL) of the app served on a free local port, in Debian's headless Chromium."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not IN_CI and not (chromium and chromedriver):
        pytest.skip("needs Debian's chromium and chromium-driver (`.ci/run` installs them)")
    if not IN_CI:
        pytest.importorskip("gradio")
        pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from hf_tokenprune.space import launch_space

    port = _free_port()
    app = launch_space(SpaceArguments(port=port, examples=4, timing_repeats=1), block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1500")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver, f"http://127.0.0.1:{port}/"
    finally:
        driver.quit()
        app.close()


class Page:
    """The app's page: each method is one thing a user does."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by = driver, By
        self.wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))

    def find(self, selector: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, selector)

    def type_into(self, selector: str, text: str):
        from selenium.webdriver.common.keys import Keys

        element = self.find(selector)
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(str(text), Keys.TAB)

    def pick_example(self, index: int = 0):
        self.find(f'[data-testid="dataset-cell-{index}-0"]').click()
        self.wait.until(lambda d: self.find("#image img") and self.find("#question textarea").get_attribute("value"))

    def upload(self, path: Path):
        self.find("#image input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, "#image img"))

    def choose_method(self, method: str):
        from selenium.webdriver.common.keys import Keys

        element = self.find("#method input")
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(method)
        self.find(f'#method li[aria-label="{method}"]').click()
        self.wait.until(lambda d: self.find("#method input").get_attribute("value") == method)

    def status(self) -> str:
        return " ".join(self.find("#status").text.split())  # inline code renders on lines of its own

    def run(self, button: str = "#run") -> str:
        """Press `button` and wait for the app's answer in the status line; returns it."""
        before = self.status()
        self.find(button).click()
        finished = ("Done", "Compared", "Input problem", "Cannot run", "Something went wrong")
        self.wait.until(lambda d: self.status() != before and self.status().startswith(finished))
        return self.status()

    def value(self, selector: str) -> str:
        return self.find(selector).get_attribute("value")

    def image(self, selector: str) -> Image.Image:
        source = self.find(f"{selector} img").get_attribute("src")
        with urllib.request.urlopen(source) as response:
            return Image.open(io.BytesIO(response.read())).convert("RGB")


def oracle(method: str, budget: float | int, example_index: int) -> tuple[str, str, int]:
    """(unpruned answer, pruned answer, visual tokens) of the example, from direct `generate` calls."""
    bed = bundled_testbed()
    base, processor = bed.load_testbed()
    pruned = get_pruned_model(base, str(bed.adapters[method]))
    example = bed.make_split("test", example_index + 1)[example_index]
    batch = bed.build_batch(processor, [example.image], [example.question])
    length = batch["input_ids"].shape[1]

    def answer(model, **kwargs) -> str:
        sequences = model.generate(**batch, max_new_tokens=2, do_sample=False, **kwargs)
        return bed.first_word(processor.batch_decode(sequences[:, length:], skip_special_tokens=True)[0])

    total = int((batch["input_ids"] == base.config.image_token_id).sum())
    return answer(base), answer(pruned, prune_budget=budget, prune_method=method), total


def _blank(image: Image.Image) -> bool:
    return max(high - low for low, high in image.getextrema()) < 10


def test_browser_run_matches_generate_and_shows_the_overlay(browser, tmp_path):
    driver, url = browser
    method, budget, example_index = "visionselector", 0.13, 1
    page = Page(driver, url)
    page.pick_example(example_index)
    page.choose_method(method)
    page.type_into("#budget input[type=number]", budget)
    status = page.run()

    unpruned_answer, pruned_answer, total = oracle(method, budget, example_index)
    kept = kept_by_rule(budget, total)
    assert status.startswith(f"Done: {method} kept {kept} of {total} visual tokens"), status
    assert page.value("#answer-pruned textarea") == pruned_answer
    assert page.value("#answer-unpruned textarea") == unpruned_answer
    summary = " ".join(page.find("#summary").text.split())
    assert f"Kept {kept} of {total} visual tokens." in summary and "Prefill speed-up" in summary
    overlay = page.image("#overlay")
    assert not _blank(overlay)

    status = page.run("#compare")
    methods = len(available_selectors())  # every method, the bundled learned ones included
    assert status.startswith(f"Compared {methods} methods"), status
    rows = page.find("#compare-table").text
    assert all(name in rows for name in ("visionselector", "questionselector", "autoselect", "divprune", "dart"))
    assert len(page.driver.find_elements(page.by.CSS_SELECTOR, "#compare-gallery img")) >= methods
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "space.png"
    driver.save_screenshot(str(screenshot))
    assert not _blank(Image.open(screenshot).convert("RGB"))
    if SCREENSHOT_COPY:
        shutil.copyfile(screenshot, SCREENSHOT_COPY)


def test_browser_bad_input_gives_a_message_and_the_next_request_succeeds(browser, tmp_path):
    driver, url = browser
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is a text file, not a PNG")
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000), 1).save(huge)

    def next_request_succeeds(page: Page, tokens: int):
        page.pick_example(0)
        page.type_into("#tokens input", tokens)
        status = page.run()
        assert status.startswith(f"Done: autoselect kept {tokens} of "), status
        assert page.value("#answer-pruned textarea")

    page = Page(driver, url)  # no image
    page.type_into("#question textarea", "what colour is the circle")
    assert page.run() == "Input problem: No image: upload one, paste one, or pick an example below."
    next_request_succeeds(page, 7)

    page = Page(driver, url)
    page.upload(text_file)
    page.type_into("#question textarea", "what colour is the circle")
    assert page.run().startswith("Input problem: notes.png is not an image this app can read")
    next_request_succeeds(page, 5)

    page = Page(driver, url)
    page.upload(huge)
    page.type_into("#question textarea", "what colour is the circle")
    status = page.run()
    assert "The image is 10000 x 10000 px; it was shrunk to 2048 x 2048 first." in status, status
    assert status.startswith("Done"), status
    next_request_succeeds(page, 9)

    page = Page(driver, url)
    page.pick_example(0)
    page.type_into("#question textarea", "   ")
    assert page.run() == "Input problem: The question is empty: type a question about the image."
    next_request_succeeds(page, 3)


def test_a_pruned_repo_runs_its_own_method_and_every_training_free_one():
    """`--model FOLDER` (a repo written by save_pretrained): answers equal direct `generate` calls on the same repo."""
    from hf_tokenprune import PrunedQwen2_5_VLForConditionalGeneration, available_selectors, get_selector_class
    from hf_tokenprune_testbed.bundled import hub_adapter

    folder = str(hub_adapter("visionselector"))  # the bundled selector as save_pretrained lays a repo out
    space = SpaceModel.load(folder)
    free = [name for name in available_selectors() if not get_selector_class(name).trainable]
    assert space.methods == ["visionselector", *free]

    model = PrunedQwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    example = bundled_testbed().make_split("test", 1)[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": example.question}]}]
    text = space.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = space.processor(text=[text], images=[example.image], return_tensors="pt")
    total = int((inputs["input_ids"] == model.config.image_token_id).sum())
    for method, budget in (("visionselector", 0.2), ("dart", 5)):
        sequences = model.generate(
            **inputs, max_new_tokens=32, do_sample=False, prune_method=method, prune_budget=budget
        )
        expected = space.processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        result = space.run(example.image, example.question, method, budget, timing_repeats=1)
        assert result.answer == expected[0].strip()
        assert (result.kept, result.total) == (kept_by_rule(budget, total), total)


def test_cli_space_parses_its_flags_and_launches(monkeypatch):
    import hf_tokenprune.space as space

    launched = []
    monkeypatch.setattr(space, "launch_space", lambda args, block=True: launched.append((args, block)))
    assert main(["space", "--model", "someone/model", "--port", "7999", "--share", "false"]) == 0
    args, block = launched[0]
    assert (args.model, args.port, args.share, block) == ("someone/model", 7999, False, True)
