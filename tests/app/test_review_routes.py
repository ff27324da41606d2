"""The review queue over HTTP: photos kept as the policy asks, listed, shown with their heatmap,
labelled by a named key, and trained on with POST /train data_path=review:SITE."""

import base64

from fastapi.testclient import TestClient

from app.main import create_app
from core.jobs import TrainingParams
from core.settings import Settings
from tests.app.conftest import API_KEY, FakeSubmitter, png_bytes

KEY = {"X-API-Key": API_KEY}


def photos(count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png_bytes((40 + i, 30)), "image/png")) for i in range(count)]


def test_unsure_photos_are_kept_listed_shown_and_labelled(settings: Settings) -> None:
    settings.review = "unsure"
    settings.unsure_min_probability = 1.0  # every answer is unsure
    with TestClient(create_app(settings)) as client:
        results = client.post("/classify", files=photos(2), data={"site": "sd"}).json()["results"]
        ids = [r["review_id"] for r in results]
        assert all(ids)
        page = client.get("/review", headers=KEY).json()
        assert (page["total"], [i["id"] for i in page["items"]]) == (2, ids)
        assert page["items"][0]["site"] == "sd"
        assert page["items"][0]["unsure_reasons"] == ["low confidence"]
        assert page["items"][0]["predicted"] == results[0]["label"]
        assert client.get("/review", headers=KEY, params={"site": "er"}).json()["total"] == 0
        assert (
            client.get("/review", headers=KEY, params={"order": "least_sure", "limit": 1}).json()["total"]
            == 2
        )

        item = client.get(f"/review/{ids[0]}", headers=KEY).json()
        assert item["label"] is None
        assert base64.b64decode(item["thumbnail"])[:2] == b"\xff\xd8"
        assert base64.b64decode(item["heatmap"])[:8] == b"\x89PNG\r\n\x1a\n"
        photo = client.get(f"/review/{ids[0]}/photo", headers=KEY)
        assert (photo.status_code, photo.headers["content-type"]) == (200, "image/jpeg")

        assert client.post(f"/review/{ids[0]}", data={"label": "glass"}).status_code == 401
        labelled = client.post(f"/review/{ids[0]}", data={"label": "glass"}, headers=KEY).json()
        assert labelled["label"] == "glass"
        assert labelled["labels"][0]["by"].startswith("key-")
        again = client.post(f"/review/{ids[0]}", data={"label": "metal"}, headers=KEY)
        assert again.status_code == 409
        assert "relabel=true" in again.json()["detail"]
        relabelled = client.post(
            f"/review/{ids[0]}", data={"label": "metal", "relabel": "true"}, headers=KEY
        ).json()
        assert [lab["label"] for lab in relabelled["labels"]] == ["glass", "metal"]
        unknown = client.post(f"/review/{ids[1]}", data={"label": "battery"}, headers=KEY)
        assert unknown.status_code == 422
        assert "'battery' is not one of" in unknown.json()["detail"]
        assert client.post("/review/nope", data={"label": "glass"}, headers=KEY).status_code == 404
        assert client.get("/review/nope", headers=KEY).status_code == 404
        # The labelled item has left the pending list.
        assert [i["id"] for i in client.get("/review", headers=KEY).json()["items"]] == [ids[1]]
        assert (
            client.get("/review", headers=KEY, params={"state": "labelled"}).json()["items"][0]["label"]
            == "metal"
        )


def test_nothing_is_kept_unless_the_settings_or_the_request_ask(client: TestClient) -> None:
    result = client.post("/classify", files=photos(1)).json()["results"][0]
    assert result["review_id"] is None
    # Keeping more than the server does needs a key of the review role.
    assert client.post("/classify", files=photos(1), data={"review": "all"}).status_code == 401
    kept = client.post("/classify", files=photos(1), data={"review": "all"}, headers=KEY).json()["results"][0]
    assert kept["review_id"] is not None
    assert client.get("/review", headers=KEY).json()["total"] == 1


def test_bad_review_fields_are_refused(client: TestClient) -> None:
    bad_site = client.post("/classify", files=photos(1), data={"site": "../etc"})
    assert bad_site.status_code == 422
    assert "site '../etc'" in bad_site.json()["detail"]
    bad_policy = client.post("/classify", files=photos(1), data={"review": "sometimes"})
    assert bad_policy.status_code == 422
    assert client.get("/review", headers=KEY, params={"reason": "bored"}).status_code == 422


def test_a_site_review_set_trains_with_its_lineage(settings: Settings, submitted: FakeSubmitter) -> None:
    with TestClient(create_app(settings, submitter=submitted)) as client:
        ids = [
            r["review_id"]
            for r in client.post(
                "/classify", files=photos(4), data={"site": "sd", "review": "all"}, headers=KEY
            ).json()["results"]
        ]
        form = {"data_path": "review:sd", "epochs": "2"}
        nothing = client.post("/train", data=form, headers=KEY)
        assert nothing.status_code == 422
        assert "no photo labelled with a class" in nothing.json()["detail"]
        for item_id in ids[:2]:
            client.post(f"/review/{item_id}", data={"label": "glass"}, headers=KEY)
        one_class = client.post("/train", data=form, headers=KEY)
        assert one_class.status_code == 422
        assert "one class only" in one_class.json()["detail"]
        client.post(f"/review/{ids[2]}", data={"label": "metal"}, headers=KEY)
        client.post(f"/review/{ids[3]}", data={"label": "not waste"}, headers=KEY)
        accepted = client.post("/train", data={**form, "base": "default"}, headers=KEY)
        assert accepted.status_code == 202, accepted.text
        assert client.post("/train", data={"data_path": "review:"}, headers=KEY).status_code == 422
    (job,) = submitted.jobs
    assert isinstance(job.params, TrainingParams)
    config = job.params.config
    assert config.split == (0.85, 0.15, 0.0)
    lineage = config.review_sets["review-sd"]
    assert (lineage["site"], lineage["labels"], lineage["per_class"]) == ("sd", 3, {"glass": 2, "metal": 1})
    assert lineage["by"][0].startswith("key-")


def test_the_review_queue_needs_a_key_even_with_reads_open(settings: Settings) -> None:
    settings.review = "all"
    with TestClient(create_app(settings)) as client:
        (result,) = client.post("/classify", files=photos(1)).json()["results"]
        item = result["review_id"]
        for path in ("/review", f"/review/{item}", f"/review/{item}/photo"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401, path
        assert client.get(f"/review/{item}/photo", headers=KEY).status_code == 200
