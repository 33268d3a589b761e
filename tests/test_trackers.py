"""The experiment trackers for real: TensorBoard, W&B in offline mode and MLflow with a local
sqlite store, installed (the `trackers` extra) and read back with each one's own reader:
TensorBoard's EventAccumulator, W&B's offline run file (its records, parsed with wandb's own
protobuf definitions) and MLflow's client. A run logs what metrics.jsonl holds (the same numbers
at the same steps), the in-training evaluation, the objective's terms, the sample grids as images
and the recipe as the run's configuration; a resumed run continues its TensorBoard folder and its
MLflow run, and says in one line that W&B offline starts a new run. A tracker that fails costs a
warning, never the run."""

import glob
import json
import re
import struct
from pathlib import Path

import pytest

from helpers import TINY, assert_same_weights, cli, weights

pytestmark = pytest.mark.slow
TRACKED = ["--set", 'train.log_with=["tensorboard", "wandb", "mlflow"]']
# the hybrid objective (learned variance) returns its terms, logged as objective/mse and objective/vb
SETTINGS = ["--set", "train.log_every=1", "--set", "train.sample_every=2", "--set", "train.eval_every=2",
            "--set", 'train.eval_metrics=[{name="bpd", limit=4, batch_size=4, timesteps_per_batch=10}]',
            "--set", 'objective.name="hybrid"', "--set", 'diffusion.variance.name="learned_range"',
            "--no-sample", "--no-eval"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run of 4 steps logged to the three trackers, then resumed to 6; both segments' output."""
    folder = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow keeps its artifacts beside the working folder
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        run = folder / "run"
        first = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=4", *TRACKED, *SETTINGS)
        assert first.returncode == 0, first.stderr
        ids = json.loads((run / "trackers.json").read_text())
        resumed = cli("run", str(TINY), "--run-dir", str(run), "--set", "train.steps=6", *TRACKED, *SETTINGS,
                      "--resume", "latest")
        assert resumed.returncode == 0, resumed.stderr
    return run, ids, first, resumed


def logged(run):
    """metrics.jsonl as {figure: {step: value}} (eval figures as eval/<name>, as the trackers get them)."""
    figures = {}
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        values = {f"eval/{k}": v for k, v in record["eval"].items()} if "eval" in record else \
            {k: v for k, v in record.items() if k not in ("step", "time")}
        for name, value in values.items():
            figures.setdefault(name, {})[record["step"]] = value
    return figures


def assert_same_figures(tracker: dict, run, rel=1e-6):
    """Every figure of metrics.jsonl, at the same steps, with the same values (TensorBoard keeps float32)."""
    expected = logged(run)
    assert {"loss", "lr", "grad_norm", "objective/mse", "objective/vb", "eval/bpd"} <= set(expected)
    assert list(expected["loss"]) == [1, 2, 3, 4, 5, 6] and list(expected["eval/bpd"]) == [2, 4, 6]
    for name, series in expected.items():
        assert set(tracker.get(name, {})) == set(series), (name, tracker.get(name), series)
        for step, value in series.items():
            assert tracker[name][step] == pytest.approx(value, rel=rel, abs=1e-12), (name, step)


def test_tensorboard_holds_every_figure_the_grids_and_the_recipe_in_one_folder_across_the_resume(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, _, _, _ = tracked
    events = EventAccumulator(str(run / run.name), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert_same_figures(scalars, run)
    assert [(e.step, e.width) for e in events.Images("samples")] == [(2, 320), (4, 320), (6, 320)]
    starts = []
    for folder in (run / run.name).iterdir():
        if folder.is_dir():
            hp = EventAccumulator(str(folder))
            hp.Reload()
            try:
                found = hp.PluginTagToContent("hparams")
            except KeyError:  # the folder of accelerate's hparams.yml
                continue
            for tag, content in found.items():
                if tag.endswith("session_start_info"):
                    starts.append(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)
    assert len(starts) == 2  # one per segment
    assert {s["train.lr"].number_value for s in starts} == {1e-3}
    assert [s["train.steps"].number_value for s in starts] in ([4, 6], [6, 4])


def wandb_records(path):
    """The records of a W&B offline run file: a LevelDB-style log (32 KiB blocks; each record a
    4-byte checksum, a 2-byte length, a 1-byte kind: full, first, middle, last) after a 7-byte
    ':W&B' header, each record one protobuf ``Record`` of wandb's own definitions."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_holds_every_figure_the_grids_and_the_recipe_and_says_it_starts_anew(tracked):
    run, ids, first, resumed = tracked
    files = sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2 and all(ids["wandb"] in f for f in files)  # the resume: a new offline run, same id
    assert f"a new offline run with the same id {ids['wandb']}" in resumed.stdout
    assert "wandb (offline)" not in first.stdout
    history, config = {}, {}
    for path in files:
        for record in wandb_records(Path(path)):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                for name, value in items.items():
                    history.setdefault(name, {})[items["_step"]] = value
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert_same_figures({k: v for k, v in history.items() if not k.startswith(("_", "samples"))}, run)
    assert sorted(history["samples/_type"]) == [2, 4, 6] and set(history["samples/_type"].values()) == {"images/separated"}
    for names in history["samples/filenames"].values():  # the PNGs themselves, in the runs' files
        assert len(list((run / "wandb").glob(f"offline-run-*/files/{names[0]}"))) == 1, names
    assert config["train.lr"] == 1e-3 and config["objective.name"] == "hybrid"


def test_mlflow_continues_one_run_with_every_figure_the_grids_and_the_recipe(tracked):
    from mlflow.tracking import MlflowClient

    run, ids, _, resumed = tracked
    assert f"mlflow: continuing run {ids['mlflow']}" in resumed.stdout
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == ids["mlflow"]  # the same run
    client = MlflowClient(f"sqlite:///{run.parent}/mlflow.db")
    found = client.get_run(ids["mlflow"])
    figures = {name: {m.step: m.value for m in client.get_metric_history(ids["mlflow"], name)}
               for name in found.data.metrics}
    assert_same_figures(figures, run)
    assert found.data.params["train.lr"] == "0.001" and found.data.params["objective.name"] == "hybrid"
    assert found.data.params["train.steps"] == "4"  # MLflow's parameters cannot change; the resume says so:
    assert f"mlflow: run {ids['mlflow']} keeps the first values of train.steps" in resumed.stdout
    images = [a.path for a in client.list_artifacts(ids["mlflow"], "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [2, 4, 6]
    assert len(client.search_runs([found.info.experiment_id])) == 1


def test_a_failing_tracker_costs_a_warning_never_the_run(tmp_path, monkeypatch):
    """MLflow pointed at a server that is not there (it cannot start), and TensorBoard failing
    from its second write on (a disk that fills): two warnings; the run trains to the end, its
    metrics.jsonl is whole and its weights equal the same run without trackers."""
    from accelerate.tracking import TensorBoardTracker

    calls = []
    original = TensorBoardTracker.log

    def log_then_fail(self, values, step=None, **kwargs):
        calls.append(step)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return original(self, values, step=step, **kwargs)

    monkeypatch.setattr(TensorBoardTracker, "log", log_then_fail)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    args = ["--set", "train.steps=4", "--set", "train.log_every=1", "--no-sample", "--no-eval"]
    tracked = cli("run", str(TINY), "--run-dir", str(tmp_path / "tracked"), "--set",
                  'train.log_with=["tensorboard", "mlflow"]', *args)
    assert tracked.returncode == 0, tracked.stderr
    warnings = re.findall(r"warning: tracker [^\n]*", tracked.stderr)
    assert len(warnings) == 2, tracked.stderr
    assert "tracker 'mlflow' could not start" in warnings[0]
    assert "tracker 'tensorboard' could not log (OSError" in warnings[1] and "training goes on" in warnings[1]
    assert calls == [1, 2]  # dropped after its failure
    assert [json.loads(line)["step"] for line in (tmp_path / "tracked" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]
    plain = cli("run", str(TINY), "--run-dir", str(tmp_path / "plain"), *args)
    assert plain.returncode == 0, plain.stderr
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "tracked"))  # bitwise
