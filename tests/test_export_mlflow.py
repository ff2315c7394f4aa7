"""MLflow export round trip against a local SQLite store, offline: one MLflow run per run directory,
updated (not duplicated) by a second export; the table loads back with an image per cell."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow  # MLflow's SQLite store is created (and migrated) per test: seconds each

from zlab import cli  # noqa: E402
from zlab.client import Client  # noqa: E402
from zlab.core.request import LoRA, Request  # noqa: E402
from zlab.runs.sweep import Sweep  # noqa: E402
from zlab.runs.tables import set_pick  # noqa: E402
from zlab.server import LocalServer  # noqa: E402

SWEEP = Sweep(
    Request("a fox", loras=[LoRA("a/b", 1.0)], width=256, height=256),
    axes={"lora1_scale": [0, 0.5, 1.0], "seed": [1, 2]},
    name="fox",
    sheet={"x": "lora1_scale", "y": "seed"},
)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns) stay in the test's folder
    with LocalServer(latency=0, capacity=8) as server, Client(base_url=str(server.base_url)) as client:
        res = client.run(SWEEP, tmp_path / "run", progress=False, cache=False, echo=lambda _line: None)
    assert res.ok
    return res


def test_a_run_directory_round_trips_through_mlflow(run_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    star = run_dir.df["key"].iat[2]
    set_pick(run_dir.out, star, favourite=True, rating=5)
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>", encoding="utf-8")
    run_id = run_dir.to_mlflow(tracking_uri=uri, reports=[report])

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["sweep.axes.lora1_scale"] == "[0, 0.5, 1.0]" and run.data.params["prompt"] == "a fox"
    assert run.data.params["axis.seed"] == "[1, 2]" and run.data.tags["zlab.favourites"] == star
    assert [m.step for m in client.get_metric_history(run_id, "cell.run_s")] == list(range(6))
    table = client.load_table(run.info.experiment_id, "zlab/cells.json", run_ids=[run_id])
    assert len(table) == 6 and set(table["key"]) == set(run_dir.df["key"])
    assert table.loc[table["key"] == star, ["favourite", "rating"]].values.tolist() == [[True, 5]]
    assert all(cell["type"] == "image" for cell in table["thumbnail"])
    names = {a.path for a in client.list_artifacts(run_id, "images")}
    assert len(names) == 6 and {a.path for a in client.list_artifacts(run_id, "sheet")} == {"sheet/sheet.png"}
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.html"]
    images = [a.path for a in client.list_artifacts(run_id, "table_images/zlab/cells") if a.path.endswith(".png")]
    assert len(images) == 6


def test_exporting_again_updates_the_same_run(run_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["export", "mlflow", str(run_dir.out), "--tracking-uri", uri]) == 0
    first = capsys.readouterr().out
    set_pick(run_dir.out, run_dir.df["key"].iat[0], rating=3)
    assert cli.main(["export", "mlflow", str(run_dir.out), "--tracking-uri", uri]) == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "zlab"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id in first and runs[0].info.run_id in capsys.readouterr().out
    run_id = runs[0].info.run_id
    assert len(client.get_metric_history(run_id, "cell.run_s")) == 6  # unchanged values are not logged twice
    ratings = client.get_metric_history(run_id, "cell.rating")
    assert sorted((m.step, m.value) for m in ratings if m.step == 0) == [(0, 0.0), (0, 3.0)]
    table = client.load_table(experiment.experiment_id, "zlab/cells.json", run_ids=[run_id])
    assert len(table) == 6 and table["rating"].tolist()[0] == 3  # replaced, not appended
    images = [a for a in client.list_artifacts(run_id, "table_images/zlab/cells") if a.path.endswith(".png")]
    assert len(images) == 6
