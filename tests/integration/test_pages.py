"""The web pages in a real headless Chromium (Debian's), against the whole running system."""

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, expect, sync_playwright

from tests.app.conftest import API_KEY
from tests.integration.conftest import REPO_ROOT, System, zip_folder

pytestmark = pytest.mark.integration
#: Screenshots the tests take, for a person to look at.
ARTIFACTS = REPO_ROOT / "test-output"
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is needed for the web pages' tests (make test installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, system: System) -> Iterator[Page]:
    context = browser.new_context(base_url=system.api_url, viewport={"width": 390, "height": 844})
    opened = context.new_page()
    refused: list[str] = []
    opened.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
    )
    yield opened
    context.close()
    # The pages' own policy let through everything they use.
    assert not refused, refused


def test_a_photo_is_classified_explained_and_its_heatmap_blended(
    page: Page, api: httpx2.Client, trashnet_photos: Path
) -> None:
    photo = sorted((trashnet_photos / "glass").glob("*.jpg"))[0]
    expected = api.post("/classify", files={"file": (photo.name, photo.read_bytes())}).json()["results"][0]
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui$"))  # / leads to the classify page
    page.get_by_label("Drop a photo here, or choose one (on a phone: take one)").set_input_files(photo)
    expect(page.locator("#label")).to_have_text(expected["label"], timeout=30_000)
    expect(page.locator("#status")).to_have_text(f"Done: {photo.name}")
    assert page.locator("#bars li").count() == len(expected["predictions"])
    expect(page.get_by_label("Explanation method")).to_have_value("gradcam")
    expect(page.locator("#model")).to_contain_text("gradcam on")
    heatmap = page.get_by_alt_text("Grad-CAM heatmap over the photo")
    assert heatmap.evaluate("image => image.complete && image.naturalWidth > 0")
    assert heatmap.evaluate("image => getComputedStyle(image).opacity") == "0.5"
    slider = page.get_by_label("Heatmap opacity")
    slider.focus()
    for _ in range(30):
        slider.press("ArrowRight")  # the keyboard moves it, as a mouse would
    assert heatmap.evaluate("image => getComputedStyle(image).opacity") == "0.8"
    expect(page.locator("#opacity-value")).to_have_text("80%")
    answer = api.post("/classify", files={"file": (photo.name, photo.read_bytes())}).json()["results"][0]
    if answer["unsure"]:  # the badge says why, as the API does
        expect(page.locator("#unsure")).to_contain_text(", ".join(answer["unsure_reasons"]))
    else:
        expect(page.locator("#unsure")).to_be_hidden()
    similar = api.post("/similar", files={"file": (photo.name, photo.read_bytes())})
    if similar.status_code == 200:
        expect(page.locator("#similar li")).to_have_count(len(similar.json()["neighbours"]))
    else:
        expect(page.locator("#similar-status")).to_contain_text("No similar photos")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "ui-classify.png", full_page=True)


def test_a_model_is_trained_followed_and_served_from_the_training_page(
    page: Page, api: httpx2.Client, site_photos: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "site.zip"
    archive.write_bytes(zip_folder(site_photos))
    page.goto("/ui/train")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("Photos (archive)").set_input_files(archive)
    page.get_by_label("Model name").fill("from-the-page")
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Split").select_option("0.85 0.15 0")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#state")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#report")).to_contain_text("Registered from-the-page")
    drawn = page.locator("#loss").evaluate(
        "canvas => canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data.some(v => v)"
    )
    assert drawn
    before = api.get("/models").json()["serving"]
    expect(page.locator("#serving-now")).to_contain_text(f"Serving now: {before['name']} {before['version']}")
    # Switching production is confirmed first: declined, nothing changes.
    questions: list[str] = []

    def decline(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", decline)
    page.get_by_role("button", name="Serve this model").click()
    expect(page.locator("#status")).to_contain_text("Nothing changed")
    assert f"in place of {before['name']} {before['version']}" in questions[0]
    assert api.get("/models").json()["serving"] == before
    page.once("dialog", Dialog.accept)
    page.get_by_role("button", name="Serve this model").click()
    expect(page.locator("#status")).to_contain_text("is now serving")
    expect(page.locator("#serving-now")).to_contain_text("Serving now: from-the-page")
    assert api.get("/models").json()["serving"]["name"] == "from-the-page"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "ui-train.png", full_page=True)
    (job,) = [j for j in api.get("/train").json() if j["params"]["name"] == "from-the-page"]
    assert job["params"]["config"]["split"] == [0.85, 0.15, 0.0]
    # A job is followed again by its id, on a fresh page.
    page.goto("/ui/train")
    page.get_by_label("Or follow a job by its id").fill(job["id"])
    page.get_by_role("button", name="Follow").click()
    expect(page.locator("#state")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#report")).to_contain_text("Registered from-the-page")


def test_two_stored_models_explain_the_same_photo_side_by_side(
    page: Page, system: System, trashnet_photos: Path, tmp_path: Path
) -> None:
    from core.model_manager import model_store
    from core.settings import Settings
    from tests.app.conftest import tiny_checkpoint

    store = model_store(Settings(var_dir=system.root / "var"))
    store.add("compare-me", tiny_checkpoint(tmp_path / "c.pt", seed=5))
    photo = sorted((trashnet_photos / "paper").glob("*.jpg"))[0]
    page.goto("/ui")
    page.get_by_label("Drop a photo here, or choose one (on a phone: take one)").set_input_files(photo)
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    expect(page.get_by_label("Compare with")).to_contain_text("compare-me:v1")
    page.get_by_label("Compare with").select_option("compare-me:v1")
    expect(page.locator("#theirs-caption")).to_contain_text("compare-me v1:", timeout=30_000)
    theirs = page.get_by_alt_text("heatmap of the other model")
    assert theirs.evaluate("image => image.complete && image.naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "ui-compare.png", full_page=True)


#: ReDoc's footer shows Redocly's logo from their CDN; offline the image hides itself when it fails.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.mark.parametrize(("path", "shown"), [("/docs", "start_training"), ("/redoc", "Classify Images")])
def test_the_api_documentation_renders_with_no_internet(
    page: Page, system: System, path: str, shown: str
) -> None:
    # Every request that leaves the service is refused, as on a machine with no internet.
    outside: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(system.api_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(path)
    found = page.get_by_text(shown).first if path == "/docs" else page.get_by_role("heading", name=shown)
    expect(found).to_be_visible(timeout=30_000)
    if path == "/docs":
        expect(page.get_by_role("button", name=re.compile("Authorize"))).to_be_visible()
    assert set(outside) <= {REDOC_LOGO}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"ui{path.replace('/', '-')}.png")


def test_photos_are_labelled_from_the_review_page_with_one_key_press_each_and_undo(
    page: Page, api: httpx2.Client, trashnet_photos: Path
) -> None:
    chosen = sorted((trashnet_photos / "metal").glob("*.jpg"))[:3]
    files = [("files", (photo.name, photo.read_bytes())) for photo in chosen]
    answered = api.post(
        "/classify", files=files, data={"site": "page-test", "review": "all"}, headers=KEY
    ).json()
    ids = [result["review_id"] for result in answered["results"]]
    page.goto("/ui/review")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("Site").fill("page-test")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#left")).to_have_text("3", timeout=30_000)
    photo = page.get_by_alt_text("the photo to label")
    expect(photo).to_be_visible()
    classes = api.get(f"/review/{ids[0]}", params={"heatmap": "false"}, headers=KEY).json()["classes"]
    page.keyboard.press(str(classes.index("metal") + 1))
    expect(page.locator("#left")).to_have_text("2")
    page.keyboard.press(str(classes.index("glass") + 1))
    expect(page.locator("#left")).to_have_text("1")
    page.keyboard.press("u")  # the second photo comes back ...
    expect(page.locator("#left")).to_have_text("2")
    page.keyboard.press(str(classes.index("metal") + 1))  # ... and is labelled again
    expect(page.locator("#left")).to_have_text("1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "ui-review.png", full_page=True)
    first = api.get(f"/review/{ids[0]}", params={"heatmap": "false"}, headers=KEY).json()
    second = api.get(f"/review/{ids[1]}", params={"heatmap": "false"}, headers=KEY).json()
    assert [lab["label"] for lab in first["labels"]] == ["metal"]
    assert [lab["label"] for lab in second["labels"]] == ["glass", "metal"]
    assert api.get(f"/review/{ids[2]}", params={"heatmap": "false"}, headers=KEY).json()["label"] is None
