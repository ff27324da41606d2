"""The benchmarks' own pieces: the naive peer answers as the service does, and the ratios are right."""

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench import precision_batches
from bench.naive_peer import create_peer
from bench.service_load import percentile, ratios
from models.precision import precision_name
from tests.app.conftest import CLASSES, png_bytes, tiny_checkpoint


def test_the_naive_peer_classifies_and_explains(tmp_path: Path) -> None:
    client = TestClient(create_peer(tiny_checkpoint(tmp_path / "tiny.pt")))
    photo = {"file": ("p.png", png_bytes(size=(50, 30)), "image/png")}
    classified = client.post("/classify", files=photo).json()
    assert set(classified["probabilities"]) == set(CLASSES)
    assert sum(classified["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    explained = client.post("/explain", files=photo).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(explained["overlay"])))
    assert overlay.size == (50, 30)
    # Built per request and released: no hook stays on the model to run in /classify's passes.
    model = client.app.state.model  # type: ignore[attr-defined]
    assert not any(module._forward_hooks for module in model.modules())


def test_ratios_compare_ours_with_the_ceiling_and_the_peer() -> None:
    load = [
        {"server": "ours", "endpoint": "classify", "clients": 32, "photos_per_s": 30.0, "p50_ms": 100.0},
        {
            "server": "naive peer",
            "endpoint": "classify",
            "clients": 32,
            "photos_per_s": 15.0,
            "p50_ms": 200.0,
        },
        {"server": "ours", "endpoint": "explain", "clients": 1, "photos_per_s": 12.0, "p50_ms": 80.0},
        {"server": "naive peer", "endpoint": "explain", "clients": 1, "photos_per_s": 4.0, "p50_ms": 240.0},
        {
            "server": "ours, torch",
            "endpoint": "classify",
            "clients": 32,
            "photos_per_s": 20.0,
            "p50_ms": 150.0,
        },
        {
            "server": "ours, baseline checkout",
            "endpoint": "classify",
            "clients": 32,
            "photos_per_s": 10.0,
            "p50_ms": 400.0,
        },
    ]
    assert ratios(load, 40.0) == {
        "classify 32 clients / ceiling": 0.75,
        "classify 32 clients / baseline checkout (photos/s)": 3.0,
        "classify 32 clients / baseline checkout (p50)": 0.25,
        "classify 32 clients / torch backend (photos/s)": 1.5,
        "classify 32 clients / torch backend (p50)": pytest.approx(2 / 3),
        "classify 32 clients / peer (photos/s)": 2.0,
        "classify 32 clients / peer (p50)": 0.5,
        "explain 1 clients / peer (photos/s)": 3.0,
        "explain 1 clients / peer (p50)": pytest.approx(1 / 3),
    }


def test_percentiles_are_of_the_sorted_values() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert (percentile(values, 0), percentile(values, 50), percentile(values, 100)) == (1.0, 3.0, 5.0)


def test_the_precision_bench_times_every_batch_in_each_format_against_fp32(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    argv = ["--checkpoint", str(tiny_checkpoint(tmp_path / "tiny.pt")), "--device", "cpu"]
    timing = ["--batches", "1", "4", "--rounds", "1", "--seconds", "0.05", "--out", str(out)]
    assert precision_batches.main([*argv, *timing]) == 0
    rows = json.loads(out.read_text())["rows"]
    names = {"fp32", *(precision_name(d) for d in precision_batches.reduced_dtypes(torch.device("cpu")))}
    assert {(row["batch"], row["precision"]) for row in rows} == {(b, n) for b in (1, 4) for n in names}
    for row in rows:
        assert row["photos_per_s"] > 0
        if row["precision"] == "fp32":
            assert row["time_vs_fp32"] == 1.0


def test_the_ceiling_measures_one_batch_at_a_time_and_the_lanes_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.lanes import LanePlan
    from bench import service_load
    from bench.photos import Photo

    monkeypatch.setattr(service_load, "plan_lanes", lambda device: LanePlan(lanes=2, threads=1))
    photos = [Photo(f"p{i}.png", png_bytes(size=(40, 30)), CLASSES[i % len(CLASSES)]) for i in range(4)]
    ceiling = service_load.Ceiling(tiny_checkpoint(tmp_path / "tiny.pt"), photos)
    threads = torch.get_num_threads()
    rows = ceiling.measure([1, 4], rounds=2, only="fp32")
    assert [(row["batch"], row["lanes"]) for row in rows] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(row["photos_per_s"] > 0 for row in rows)
    assert torch.get_num_threads() == threads, "the lanes' thread count stays in their threads"


def test_a_record_names_the_command_that_made_it(tmp_path: Path) -> None:
    from bench.record import run_record, write_json

    record = run_record("bench.lane_speed", ["--rounds", "2"], torch.device("cpu"), rows=[1])
    assert record["command"] == "python -m bench.lane_speed --rounds 2"
    assert "usable cores" in record["machine"]
    write_json(tmp_path / "deep" / "record.json", record)
    assert json.loads((tmp_path / "deep" / "record.json").read_text()) == record


def test_the_cpu_outside_the_lanes_is_the_servers_less_the_lanes_a_photo() -> None:
    from bench.service_load import LoadResult, summarise

    def row(lane_cpu_cores: float | None) -> LoadResult:
        return LoadResult(
            server="ours",
            endpoint="classify",
            clients=32,
            requests=100,
            errors=0,
            seconds=1.0,
            photos_per_s=400.0,
            p50_ms=10.0,
            p95_ms=20.0,
            p99_ms=30.0,
            server_cpu_cores=1.2,
            loadgen_cpu_cores=0.4,
            mean_batch=8.0,
            lane_cpu_cores=lane_cpu_cores,
        )

    summary = summarise([row(0.4), row(0.4), row(0.8)])
    assert summary["server_cpu_ms_per_photo"] == pytest.approx(3.0)
    assert summary["outside_lanes_cpu_ms_per_photo"] == pytest.approx(2.0)  # (1.2 - 0.4) / 400 s
    assert summarise([row(None)])["outside_lanes_cpu_ms_per_photo"] is None, "a server without the counter"
