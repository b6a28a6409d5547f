"""`make paper` gives the same numbers for the same inputs: stages see the networks as loaded, a run killed (a real
process, SIGKILL) and resumed equals an uninterrupted one number for number, only the set's own distinct networks
are analysed, and damaged, missing or foreign stage files and arrays are named with the fix."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ops.paper import PaperError, pipeline, smoke
from ops.train import sets

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fashion_mnist_reference.json"


def _claims(folder):
    """Every number of a run's results (the corrupted set's folder, which names the run's own folder, aside)."""
    claims = json.loads((Path(folder) / "results.json").read_text())["claims"]
    claims["robustness"].pop("set")
    return claims


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return pipeline.run(CONFIG, smoke=True, out=out)


def test_a_run_killed_after_stage_1_and_resumed_gives_the_uninterrupted_numbers(uninterrupted, tmp_path):
    """Stage 1 converts its networks to channels_last and draws MC masks in that layout; before each stage got its
    own copy of the networks as loaded, a resumed run and an uninterrupted one differed in 183 numbers."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ops.paper", "--smoke", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    try:
        while not list(out.glob("*/stages/sweep.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "stage 1 did not finish in 10 minutes"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (folder,) = [p for p in out.iterdir() if p.name not in ("data", "cache")]
    assert not (folder / "report.md").exists()  # killed before the end
    resumed = pipeline.run(CONFIG, smoke=True, out=out, uid=folder.name)
    assert _claims(resumed) == _claims(uninterrupted)


def _context(tmp_path):
    spec, _ = sets.load_set(CONFIG)
    root = smoke.make_set(tmp_path / "models", spec, [0, 1])
    paths = pipeline.network_paths(spec, [0, 1], "synthetic", root)
    return pipeline.Context({}, tmp_path / "run", None, None, "synthetic", paths, torch.device("cpu"), None, None)


def test_each_stage_gets_the_networks_as_loaded(tmp_path):
    import models

    ctx = _context(tmp_path)
    (_, first), _ = ctx.nets("mcdo")
    loaded = {k: v.clone() for k, v in first.state_dict().items()}
    first.to(memory_format=torch.channels_last)  # what a stage may do to its networks
    models.mc_dropout(first, enabled=False)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    (_, again), _ = ctx.nets("mcdo")
    assert again is not first and models.is_stochastic(again) and not again.training
    assert all(p.is_contiguous() for p in again.parameters())
    assert all(torch.equal(v, loaded[k]) for k, v in again.state_dict().items())


def _copy_set(tmp_path):
    spec, networks = sets.load_set(CONFIG)
    root = smoke.make_set(tmp_path / "models", spec, [0, 1])
    return spec, networks, root


def test_untrained_networks_are_refused_as_the_reference_set_in_full_mode(tmp_path):
    spec, networks, root = _copy_set(tmp_path)
    paths = pipeline.network_paths(spec, [0, 1], "synthetic", root)
    pipeline.check_networks(paths, networks, check_recipe=False)  # the smoke run's own set: accepted there
    with pytest.raises(PaperError, match=r"reference-mcdo-s0\.pth\.tar: .*(train|recipe|epochs|is )") as err:
        pipeline.check_networks(paths, networks, check_recipe=True)
    assert "train-set" in str(err.value)


def test_a_seed_that_is_a_copy_of_another_is_refused_naming_both(tmp_path):
    spec, networks, root = _copy_set(tmp_path)
    paths = pipeline.network_paths(spec, [0, 1], "synthetic", root)
    shutil.copyfile(paths["mcdo"][0], paths["mcdo"][1])  # the weights only: the card still says seed 1
    with pytest.raises(PaperError, match="its weights are those of") as err:
        pipeline.check_networks(paths, networks, check_recipe=False)
    assert paths["mcdo"][1].name in str(err.value) and paths["mcdo"][0].name in str(err.value)


def test_a_card_whose_seed_or_model_disagrees_with_its_file_name_is_refused(tmp_path):
    spec, networks, root = _copy_set(tmp_path)
    paths = pipeline.network_paths(spec, [0, 1], "synthetic", root)
    card = Path(str(paths["dnn"][1]).removesuffix(".pth.tar") + ".json")
    data = json.loads(card.read_text())
    card.write_text(json.dumps({**data, "seed": 0}))
    with pytest.raises(PaperError, match=r"dnn-s1\.pth\.tar: its card says seed 0, its file name seed 1"):
        pipeline.check_networks(paths, networks, check_recipe=False)


def test_the_shipped_networks_are_the_sets_own_and_distinct():
    spec, networks = sets.load_set(CONFIG)
    done, partial = pipeline.complete_seeds(spec, "fashion_mnist", ROOT / spec["export"])
    # the set is complete: every seed, although the MLP head has only seeds 0-2 (a run without --seeds used to
    # stop at seed 2 for want of an MLP head at seeds 3 and 4)
    assert (done, partial) == (spec["seeds"], []) == ([0, 1, 2, 3, 4], [])
    paths = pipeline.network_paths(spec, done, "fashion_mnist", ROOT / spec["export"])
    pipeline.check_networks(paths, networks, check_recipe=True)


@pytest.mark.parametrize("damage, message", [
    ("not json", "is not valid JSON"),
    ({"fingerprint": None}, "is not a finished stage"),
    ("link", "link out of the run folder")])
def test_damaged_or_foreign_stage_files_are_named_with_the_fix(uninterrupted, tmp_path, damage, message):
    folder = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, folder)
    stage = folder / "stages" / "robustness.json"
    if damage == "link":
        outside = tmp_path / "elsewhere.json"
        shutil.copyfile(stage, outside)
        stage.unlink()
        stage.symlink_to(outside)
    else:
        stage.write_text(damage if isinstance(damage, str) else json.dumps(damage))
    with pytest.raises(PaperError, match=message) as err:
        pipeline.run(CONFIG, smoke=True, out=tmp_path, uid=folder.name)
    assert "robustness.json" in str(err.value) and ("delete" in str(err.value) or "new run" in str(err.value))


@pytest.mark.parametrize("damage, message", [("truncate", "is missing or damaged"), ("remove", "lacks"),
                                             ("link", "link out of the run folder")])
def test_damaged_missing_or_foreign_arrays_are_named_with_the_fix(uninterrupted, tmp_path, damage, message):
    folder = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, folder)
    (folder / "stages" / "ensembles.json").unlink()  # stage 3 reads stage 1's arrays again on a resume
    array = folder / "arrays" / "sweep" / "mcdo-1-2.npy"
    if damage == "truncate":
        array.write_bytes(array.read_bytes()[:40])
    elif damage == "remove":
        array.unlink()
    else:
        outside = tmp_path / "elsewhere.npy"
        np.save(outside, np.zeros(3))
        array.unlink()
        array.symlink_to(outside)
    with pytest.raises(PaperError, match=message) as err:
        pipeline.run(CONFIG, smoke=True, out=tmp_path, uid=folder.name)
    assert "mcdo-1-2.npy" in str(err.value) and "sweep.json" in str(err.value)


def test_a_resume_on_another_machine_kind_is_refused_naming_it(uninterrupted, tmp_path):
    folder = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, folder)
    meta = json.loads((folder / "run.json").read_text())
    meta["machine_kind"] = {**meta["machine_kind"], "cpu": "another CPU", "cpu_capability": "SSE2"}
    meta["fingerprint"] = pipeline._fingerprint(meta)
    (folder / "run.json").write_text(json.dumps(meta))
    with pytest.raises(PaperError, match="another machine_kind .*resume it there"):
        pipeline.run(CONFIG, smoke=True, out=tmp_path, uid=folder.name)


def test_seeds_outside_the_set_or_leaving_a_variant_empty_are_refused(tmp_path):
    spec, _, root = _copy_set(tmp_path)
    with pytest.raises(PaperError, match=r"\[7\] are not seeds of the set"):
        pipeline.network_paths(spec, [0, 7], "synthetic", root)
    with pytest.raises(PaperError, match=r"\['mcdo_mlp'\] would have no network"):
        pipeline.network_paths(spec, [3, 4], "synthetic", root)


def test_an_export_without_its_card_is_not_a_finished_network(tmp_path):
    spec, _, root = _copy_set(tmp_path)
    paths = pipeline.network_paths(spec, [0, 1], "synthetic", root)
    Path(str(paths["dnn"][1]).removesuffix(".pth.tar") + ".json").unlink()
    with pytest.raises(PaperError, match="dnn seed 1"):
        pipeline.network_paths(spec, [0, 1], "synthetic", root)
    assert pipeline.complete_seeds(spec, "synthetic", root) == ([0], [1, 2, 3, 4])


def test_a_seed_the_mlp_head_does_not_have_is_complete_without_it(tmp_path):
    spec, _, root = _copy_set(tmp_path)
    assert spec["networks"]["mcdo_mlp"]["seeds"] == [0, 1, 2] and spec["seeds"] == [0, 1, 2, 3, 4]
    smoke.make_set(root, spec, [2, 3], dataset="synthetic")
    assert pipeline.complete_seeds(spec, "synthetic", root) == ([0, 1, 2, 3], [4])
    paths = pipeline.network_paths(spec, [0, 1, 2, 3], "synthetic", root)
    assert sorted(paths["mcdo_mlp"]) == [0, 1, 2] and sorted(paths["mcdo"]) == [0, 1, 2, 3]


def test_a_set_with_auto_precision_accepts_the_precision_its_cards_record():
    """A network trained in bf16 on an AVX512-BF16 machine is the set's on any machine, and an fp32 one too: the
    card names what "auto" chose (before, an AVX2-only machine refused all 15 shipped networks)."""
    _, networks = sets.load_set(CONFIG)
    n = networks[0]
    for exported in ("bf16", "fp32"):
        card = {**n.cfg, "env": {**n.cfg["env"], "precision": exported}}
        assert sets._recipe_differences(card, n.cfg) == {}
    fixed = {**n.cfg, "env": {**n.cfg["env"], "precision": "fp32"}}
    card = {**n.cfg, "env": {**n.cfg["env"], "precision": "bf16"}}
    assert "env.precision" in sets._recipe_differences(card, fixed)  # an explicit precision must match


def test_the_equivalent_ensemble_size_interpolates_the_plain_curve():
    from ops.paper.stages import equivalent_size

    curve = {1: 1.0, 2: 0.9, 5: 0.86, 10: 0.84, 50: 0.83}
    assert equivalent_size(curve, 0.95) == pytest.approx(1.5)
    assert equivalent_size(curve, 0.85) == pytest.approx(7.5)
    assert equivalent_size(curve, 0.83) == 50
    assert equivalent_size(curve, 0.80) == float("inf")  # better than the largest size: "> 50"
    assert equivalent_size(curve, 1.2) == 0.0  # worse than one sample
    # where the curve flattens it wobbles: a smaller size matching the value does not count while 50 is worse
    wobbly = {1: 1.0, 2: 0.9, 5: 0.84, 10: 0.845, 50: 0.846}
    assert equivalent_size(wobbly, 0.842) == float("inf")
    # the size from which on every larger one is at least as good: between 10 (worse) and 50
    assert equivalent_size({1: 1.0, 2: 0.9, 5: 0.84, 10: 0.86, 50: 0.83}, 0.85) == pytest.approx(10 + 40 / 3)


def test_seed_directions_count_each_seed_against_the_other_arm():
    from ops.paper.stages import seed_directions

    d = seed_directions([0.30, 0.20, 0.25], [0.22, 0.24, 0.21], "lower")  # other arm's mean 0.25
    assert d["better"] == 3 and d["of"] == 3 and d["all_claimed"] and d["text"] == "3 of 3 seeds lower"
    assert seed_directions([0.30, 0.20, 0.25], [0.22, 0.24, 0.21], "lower", paired=True)["better"] == 2
    assert seed_directions([0.9], [0.95, 0.85], "higher")["text"] == "1 of 2 seeds higher"


def test_a_resumed_run_keeps_its_own_seeds_and_a_new_run_chooses_later(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "run.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    assert pipeline.resumed_seeds(tmp_path, "r1", None, smoke=False) == [0, 1, 2]  # the set may have grown since
    assert pipeline.resumed_seeds(tmp_path, "r1", [0, 1], smoke=False) == [0, 1]  # --seeds wins
    assert pipeline.resumed_seeds(tmp_path, None, None, smoke=False) is None  # a new run: trained seeds, later
    (tmp_path / "r1" / "run.json").write_text("{damaged")
    with pytest.raises(PaperError, match="run.json"):
        pipeline.resumed_seeds(tmp_path, "r1", None, smoke=False)


def test_the_cache_computes_each_entry_once_and_refuses_damaged_or_foreign_entries(tmp_path):
    from ops.paper.cache import CacheError, NetworkCache

    cache, calls = NetworkCache(tmp_path / "cache", {"data": "d"}), []

    def compute():
        calls.append(1)
        return {"pred": torch.arange(6.0).reshape(2, 3), "curve": {1: {"nll": 0.5}, 2: {"nll": 0.25}}, "n": (1, 2)}

    first = cache.get("sweep", "sha-a", {"images": 10}, compute)
    assert cache.take_reused() == 0.0  # computed, not read
    again = cache.get("sweep", "sha-a", {"images": 10}, compute)
    assert len(calls) == 1 and torch.equal(first["pred"], again["pred"])
    recorded = json.loads((cache.folder("sweep", "sha-a", {"images": 10}) / "entry.json").read_text())["seconds"]
    assert recorded > 0 and cache.take_reused() == 0.0  # computed by this process: not reused when read again
    later = NetworkCache(tmp_path / "cache", {"data": "d"})  # another run: its recorded time, counted once
    later.get("sweep", "sha-a", {"images": 10}, compute)
    later.get("sweep", "sha-a", {"images": 10}, compute)
    assert later.take_reused() == recorded and later.take_reused() == 0.0 and len(calls) == 1
    assert first["curve"] == again["curve"] == {1: {"nll": 0.5}, 2: {"nll": 0.25}} and again["n"] == [1, 2]
    cache.get("sweep", "sha-a", {"images": 20}, compute)  # other settings, another network, another base: computed
    cache.get("sweep", "sha-b", {"images": 10}, compute)
    NetworkCache(tmp_path / "cache", {"data": "other"}).get("sweep", "sha-a", {"images": 10}, compute)
    assert len(calls) == 4
    folder = cache.folder("sweep", "sha-a", {"images": 10})
    (folder / "entry.json").unlink()  # cut short before its last write: computed again, never half-read
    cache.get("sweep", "sha-a", {"images": 10}, compute)
    assert len(calls) == 5
    (folder / "pred.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CacheError, match=f"{folder / 'pred.npy'} is missing or damaged.*: delete {folder}"):
        cache.get("sweep", "sha-a", {"images": 10}, compute)
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, np.zeros((2, 3), np.float32))
    (folder / "pred.npy").unlink()
    (folder / "pred.npy").symlink_to(outside)
    with pytest.raises(CacheError, match="link out of the cache entry"):
        cache.get("sweep", "sha-a", {"images": 10}, compute)
    entry = json.loads((folder / "entry.json").read_text())
    (folder / "entry.json").write_text(json.dumps(dict(entry, seconds="soon")))
    with pytest.raises(CacheError, match="records 'soon' as its computing time, not a number of seconds"):
        cache.get("sweep", "sha-a", {"images": 10}, compute)
    entry["what"]["network"] = "sha-b"  # an entry copied under another key
    (folder / "entry.json").write_text(json.dumps(entry))
    with pytest.raises(CacheError, match="does not describe the computation its key stands for"):
        cache.get("sweep", "sha-a", {"images": 10}, compute)


def test_a_run_with_one_more_seed_computes_only_the_new_networks_and_gives_the_same_numbers(tmp_path):
    """Results are cached per network (its sha256 and the stage's settings): a second run over the same networks
    and a new seed computes the new seed's networks only, and its numbers for the old seeds are the first run's."""
    first = pipeline.run(CONFIG, smoke=True, out=tmp_path, seeds=[0, 1])
    entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*/*/entry.json")}
    stages = {p.parent.parent.name for p in entries}
    assert {"sweep", "predictions", "robustness", "hessians", "ood", "train_nll"} <= stages
    networks = {stage: {json.loads(p.read_text())["what"]["network"] for p in entries if p.parent.parent.name == stage}
                for stage in ("sweep", "predictions")}
    assert len(networks["sweep"]) == 4 and len(networks["predictions"]) >= 4  # dnn, MLP, pre-act, ReLU6
    assert not networks["sweep"] & networks["predictions"]  # claim 8 reads the MC networks' sweep, never a 2nd pass
    second = pipeline.run(CONFIG, smoke=True, out=tmp_path, seeds=[0, 1, 2])
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*/*/entry.json")}
    assert all(after[p] == t for p, t in entries.items())  # nothing of the first run was computed again
    sweep = [p for p in after if p.parent.parent.name == "sweep"]
    assert len(sweep) == 6 and len([p for p in entries if p.parent.parent.name == "sweep"]) == 4
    curves = [json.loads((f / "results.json").read_text())["claims"]["sweep"]["curves"] for f in (first, second)]
    # the report's time from scratch adds what the reused results took when they were computed
    reused = [json.loads((f / "results.json").read_text())["reused_seconds"] for f in (first, second)]
    assert sum(reused[0].values()) == 0 and sum(reused[1].values()) > 0 and reused[1]["landscapes"] > 0
    assert "Nothing came from the per-network cache" in (first / "report.md").read_text()
    assert "From scratch, with nothing cached, about" in (second / "report.md").read_text()
    for v in ("mcdo", "mcdo_smoothing"):
        assert {s: curves[1][v][s] for s in ("0", "1")} == curves[0][v]


def test_a_second_process_waits_for_a_cache_entry_being_computed_and_reads_it(tmp_path, capsys):
    """Two runs reaching the same entry: the second waits for the first's lock (saying whom it waits for), then
    reads what the first wrote; the entry is computed once."""
    import threading

    from ops.paper.cache import NetworkCache

    cache, calls = NetworkCache(tmp_path / "cache", {}), []

    def slow():
        calls.append(1)
        time.sleep(1.0)
        return {"x": torch.ones(3)}

    first = threading.Thread(target=lambda: cache.get("s", "sha", {}, slow))
    first.start()
    while not calls:
        time.sleep(0.01)
    second = NetworkCache(tmp_path / "cache", {}).get("s", "sha", {}, slow)  # its own lock handle, as a process
    first.join()
    assert len(calls) == 1 and torch.equal(second["x"], torch.ones(3))
    out = capsys.readouterr().out
    assert "is in use by pid" in out and "waiting for it" in out


def test_a_cache_workspace_with_a_link_is_refused_and_digit_keys_come_back_only_when_plain(tmp_path):
    from ops.paper.cache import CacheError, NetworkCache, _int_keys

    cache = NetworkCache(tmp_path / "cache", {})
    with cache.workspace("landscape", "sha", {"n": 3}) as folder:
        folder.mkdir(parents=True)
        (folder / "points.rank0.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(CacheError, match=r"points.rank0.jsonl is a link.*delete"):
        with cache.workspace("landscape", "sha", {"n": 3}):
            pass
    assert _int_keys({"5": {"12": 1}, "05": 2, "²": 3, "x": [{"7": 4}]}) == {5: {12: 1}, "05": 2, "²": 3,
                                                                             "x": [{7: 4}]}


def test_the_tables_say_in_words_where_every_seed_points_the_claimed_way_and_show_the_equivalent_size():
    from ops.paper import report
    from ops.paper.stages import row

    h = {"a": (0.20, 0.1, 0.3), "b": (0.19, 0.09, 0.29), "b - a": {"nll": (-0.01, -0.03, 0.01)},
         "seeds": 3, "per_seed": {"a": {"nll": [0.20, 0.21, 0.19]}, "b": {"nll": [0.18, 0.19, 0.185]}}}
    h["a"], h["b"] = {"nll": h["a"]}, {"nll": h["b"]}
    r = row(h, "a", "b", "nll", "NLL: b vs a", primary=True)
    assert r["verdict"] == "not resolved" and r["direction"]["text"] == "3 of 3 seeds lower"
    cell = report._verdict_cell(r)
    assert cell == ("**not resolved** (3 of 3 seeds lower: every seed points the claimed way, but the interval "
                    "crosses zero)")
    assert report._row_cells(r)[0] == "NLL: b vs a"  # said once, beside the verdict
    eq = {"quantity": "equivalent ensemble size", "metric": "size", "kind": "equivalent", "text": "> 50 [30, > 50]",
          "verdict": None, "primary": True, "paper": "about 30"}
    _, _, rows = report._verdict_table({"sweep": {"rows": [r, eq]}})
    assert rows == [["1-2", rows[0][1], "NLL: b vs a", "-0.0100 [-0.0300, 0.0100]", cell],
                    ["1-2", rows[0][1], "equivalent ensemble size", "> 50 [30, > 50]", "measurement (no verdict)"]]
