"""What the analyses promise about the files they write, case by case, grouped by guarantee: nothing is mixed
(fingerprints), nothing is shared (one writer), nothing escapes its folder, results keep their identity, and bad
inputs are refused at the boundary with the file, the field and the fix."""
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from ops import run
from ops.analysis import landscape_files, landscapes, robustness
from ops.analysis.hessians import max_eigenvalue_spectrum
from ops.data import corrupted_sets, corruptions, datasets
from ops.evaluate import reports
from tests.helpers import hold_lock

ROOT = Path(__file__).resolve().parents[1]


def _images(n=12, seed=0):
    _, test = datasets.synthetic(n_train=4, n_test=n, seed=seed)
    return test



def _hold_lock(lock_path):
    return hold_lock(lock_path, seconds=120)


# --- Nothing mixed: every cached artifact carries what determines it, and a mismatch is refused --------------

def test_perturbed_sequences_of_another_seed_are_refused_not_silently_replaced(tmp_path):
    clean = _images()
    folder = corrupted_sets.generate_perturbed(clean, tmp_path, ptypes=("gaussian_noise",), seed=0, progress=False)
    before = (folder / "gaussian_noise.npy").read_bytes()
    with pytest.raises(ValueError, match="seed differ"):
        corrupted_sets.generate_perturbed(clean, tmp_path, ptypes=("gaussian_noise",), seed=1, progress=False)
    assert (folder / "gaussian_noise.npy").read_bytes() == before  # nothing deleted
    corrupted_sets.generate_perturbed(clean, tmp_path, ptypes=("gaussian_noise",), seed=1, progress=False,
                                      overwrite=True)
    assert (folder / "gaussian_noise.npy").read_bytes() != before


def test_a_corrupted_folder_with_data_but_no_meta_is_not_trusted(tmp_path):
    folder = tmp_path / "SYNTHETIC-C"
    folder.mkdir()
    np.save(folder / "fog.npy", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="no meta.json"):
        corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1,), progress=False,
                                          workers=1)
    assert (folder / "fog.npy").exists()


def test_relative_ce_against_another_clean_set_is_refused(tmp_path):
    clean = _images(seed=0)
    cset = corrupted_sets.generate_corrupted(clean, tmp_path, corruptions=["fog"], severities=(1,), progress=False,
                                             workers=1)
    model = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="made from other images"):
        robustness.evaluate_corrupted(model, cset, mean=clean.mean, std=clean.std, clean=_images(seed=1),
                                      progress=False)


# --- One writer per artifact ----------------------------------------------------------------------------------

def test_a_second_generator_of_one_corrupted_set_is_refused_naming_the_first(tmp_path):
    holder = _hold_lock(tmp_path / "SYNTHETIC-C" / "lock")
    try:
        with pytest.raises(RuntimeError, match=f"in use by pid {holder.pid}"):
            corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1,),
                                              progress=False, workers=1)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "SYNTHETIC-C" / "fog.npy").exists()  # the refused run wrote nothing
    cset = corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1,),
                                             progress=False, workers=1)  # the lock died with its holder
    assert cset.corruptions == ["fog"]


def test_a_second_writer_of_perturbed_sequences_is_refused(tmp_path):
    holder = _hold_lock(tmp_path / "SYNTHETIC-P" / "lock")
    try:
        with pytest.raises(RuntimeError, match=f"in use by pid {holder.pid}"):
            corrupted_sets.generate_perturbed(_images(), tmp_path, ptypes=("translate",), progress=False)
    finally:
        holder.kill()
        holder.wait()


# --- Nothing escapes its folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "a/b", "..", ""])
def test_set_names_stay_inside_their_root(tmp_path, name):
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="plain dataset name"):
        corrupted_sets.generate_corrupted(_images(), root, name=name or " ", corruptions=["fog"], severities=(1,),
                                          progress=False)
    with pytest.raises(ValueError, match="plain dataset name"):
        corrupted_sets.generate_perturbed(_images(), root, name=name or " ", ptypes=("translate",), progress=False)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/absolute-C").exists()


@pytest.mark.parametrize("stem", ["../../x", "/abs", "a/b", ".."])
def test_corrupted_result_stems_stay_inside_their_folder(tmp_path, stem):
    with pytest.raises(ValueError, match="plain file name stem"):
        robustness.write_corrupted({"sizes": [1], "corrupted": {}}, tmp_path / "out", stem)
    assert not (tmp_path / "x_corrupted_n1.csv").exists()


# --- Results keep their identity ------------------------------------------------------------------------------

def test_result_files_never_overwrite_each_other_at_any_count(tmp_path):
    first = reports.leaderboard_path("synthetic", "m", "u", root=tmp_path)
    first.parent.mkdir(parents=True)
    first.write_text("x")
    for k in range(2, 1001):
        first.with_name(f"synthetic_m_u-{k}.csv").write_text("x")
    new = reports.new_leaderboard_path("synthetic", "m", "u", root=tmp_path)
    assert new.name == "synthetic_m_u-1001.csv" and new.exists()  # claimed: a concurrent caller gets -1002
    assert reports.new_leaderboard_path("synthetic", "m", "u", root=tmp_path).name == "synthetic_m_u-1002.csv"


def test_uid_evaluation_of_an_unfinished_run_says_the_epoch_and_files_it_apart(tmp_path, monkeypatch, capsys):
    from ops.train import trainer

    monkeypatch.chdir(tmp_path)
    small = ["dataset.name=synthetic", "dataset.mean=null", "dataset.std=null",
             'dataset.kwargs={"n_train": 64, "n_test": 16}', "train.batch_size=32", "train.epochs=2",
             "train.warmup_epochs=0", "train.max_steps_per_epoch=1", "model.block.width=4", "env.progress=false",
             "env.tensorboard=false", "env.device=cpu", "env.precision=fp32"]
    real = trainer.train_one_epoch

    def stop_in_second(run_, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(run_, epoch)

    monkeypatch.setattr(trainer, "train_one_epoch", stop_in_second)
    assert run.main(["train", "--model", "resnet_mcdo_18", "--uid", "half", *small]) == 130
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    capsys.readouterr()
    assert run.main(["test", "--uid", "half", "--sizes", "1", "dataset.test_size=8"]) == 0
    out = capsys.readouterr().out
    assert "has not finished" in out and "after epoch 1" in out
    written = list((tmp_path / "leaderboard" / "logs").rglob("*.json"))
    assert [p.name for p in written] == ["synthetic_resnet_mcdo_18_half-epoch1.json"]
    import json

    about = json.loads(written[0].read_text())["evaluation"]
    assert about["overrides"] == ["dataset.test_size=8"] and about["test_images"] == 8  # recorded


# --- Bad inputs are refused at the boundary -------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [-1, 0, 1.5, True])
def test_chunk_sizes_must_be_positive_integers(chunk):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        corruptions.corrupt(_images().images, "fog", 1, chunk_size=chunk)


@pytest.mark.parametrize("severities", [[0], [6], [1, 1], [1.5], ["1"], [], [True]])
def test_severities_are_distinct_integers_from_1_to_5(tmp_path, severities):
    with pytest.raises(ValueError, match="severities must be distinct integers from 1 to 5"):
        corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=severities,
                                          progress=False)
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        corruptions.parameters("fog", 1.0)


def _csv(tmp_path, rows, newline="\n", bom=False):
    path = tmp_path / "land.csv"
    text = newline.join(",".join(str(v) for v in r) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _grid_rows():
    return [[x, y] + [0.1 * i] * 15 for i, (y, x) in enumerate([(y, x) for y in (-1.0, 1.0) for x in (-1.0, 0.0, 1.0)])]


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_landscape_csvs_read_back_whole_with_a_bom_or_crlf(tmp_path, newline, bom):
    land = landscape_files.read_csv(_csv(tmp_path, _grid_rows(), newline, bom))
    assert len(land.records) == 6 and land.xs == [-1.0, 0.0, 1.0] and land.ys == [-1.0, 1.0]


def test_landscape_csvs_with_duplicated_or_off_grid_rows_are_refused(tmp_path):
    rows = _grid_rows()
    with pytest.raises(ValueError, match="appears twice"):
        landscape_files.read_csv(_csv(tmp_path, rows + [rows[0]]))
    off = [list(r) for r in rows]
    off[2][0] = 0.7  # one x value off the grid
    with pytest.raises(ValueError, match="do not make a grid"):
        landscape_files.read_csv(_csv(tmp_path, off))


def test_an_unbounded_landscape_is_refused_before_any_work():
    net = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="grid points; at most"):
        landscapes.landscape(net, _images(), n=10 ** 6)


def test_a_hessian_spectrum_never_returns_fewer_batches_than_asked():
    net = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="needs n_batches x batch_size = 64 images, the data have 12"):
        max_eigenvalue_spectrum(net, _images(12), n_batches=4, batch_size=16)
    assert torch.is_tensor(_images().images)


# --- A second round (red team): more ways to mix, lose or leak ------------------------------------------------

def _card_checkpoint(tmp_path, **card_changes):
    from ops.train import configs, pretrained

    model = models.get_model("resnet_mcdo_18", width=4)
    cfg = configs.make_config({"dataset": {"name": "synthetic"}, "model": {"name": "resnet_mcdo_18",
                                                                           "block": {"width": 4}}})
    path = models.save(model, "synthetic", "src", root=tmp_path / "src")
    card = pretrained.write_card(path, cfg, 10)
    if card_changes:
        import json

        data = json.loads(card.read_text())
        data.update(card_changes)
        card.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("uid", ["../../../escaped", "a/b", ".."])
def test_exports_stay_inside_their_root(tmp_path, uid):
    from ops.train import pretrained

    with pytest.raises(ValueError, match="plain name"):
        pretrained.export(_card_checkpoint(tmp_path), tmp_path / "root", uid)
    with pytest.raises(ValueError, match="dataset must be a plain dataset name"):
        pretrained.export(_card_checkpoint(tmp_path, dataset="../../x"), tmp_path / "root", "v1")
    assert not list(tmp_path.parent.glob("*escaped*")) and not (tmp_path / "root").exists()


def test_leaderboard_names_stay_inside_their_root(tmp_path):
    with pytest.raises(ValueError, match="plain name"):
        reports.new_leaderboard_path("../../../x", "m", "u", root=tmp_path)


def test_an_export_is_not_replaced_silently_and_one_without_its_card_is_unfinished(tmp_path):
    from ops.train import pretrained

    src = _card_checkpoint(tmp_path)
    first = pretrained.export(src, tmp_path / "root", "v1")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pretrained.export(src, tmp_path / "root", "v1")
    pretrained.card_path(first).unlink()  # a kill between the weights and the card
    assert pretrained.export(src, tmp_path / "root", "v1") == first and pretrained.card_path(first).exists()


def test_official_looking_sequences_without_meta_are_never_deleted(tmp_path):
    folder = tmp_path / "CIFAR-10-P"
    folder.mkdir()
    np.save(folder / "rotate.npy", np.zeros((2, 3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no meta.json"):
        corrupted_sets.generate_perturbed(_images(), tmp_path, name="cifar-10", ptypes=("translate",), progress=False)
    assert (folder / "rotate.npy").exists()


@pytest.mark.parametrize("change", ["rate", "temp"])
def test_a_landscape_of_another_dropout_rate_or_smoothing_temperature_is_another_landscape(tmp_path, change):
    base = models.get_model("resnet_dnn_18", width=4)
    if change == "rate":
        a, _ = models.add_mc_dropout(copy_of(base), 0.1)
        b, _ = models.add_mc_dropout(copy_of(base), 0.6)
    else:
        a, _ = models.add_smoothing(copy_of(base), temp=5.0)
        b, _ = models.add_smoothing(copy_of(base), temp=10.0)
    kw = dict(xs=[0.0, 0.5], ys=[0.0], batch_size=8, path=tmp_path / "run")
    directions = landscapes.random_directions(a, 2)
    landscapes.landscape(a, _images(8), directions, **kw)
    with pytest.raises(ValueError, match="weights"):
        landscapes.landscape(b, _images(8), directions, **kw)


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_points_files_trust_only_whole_lines_of_this_landscape(tmp_path):
    net = models.get_model("resnet_dnn_18", width=4)
    directions = landscapes.random_directions(net, 2)
    kw = dict(xs=[0.0, 0.5], ys=[0.0, 0.5], batch_size=8, path=tmp_path / "run")
    full = landscapes.landscape(net, _images(8), directions, **kw)
    points = tmp_path / "run" / "points.rank0.jsonl"
    lines = points.read_text().splitlines()
    import json

    pasted = json.loads(lines[0])
    pasted.update(index=3, fingerprint="from-another-landscape")  # pasted from elsewhere
    points.write_text("\n".join(lines[:2]) + "\n" + json.dumps(pasted) + "\n" + lines[2][:20])  # + a cut line
    again = landscapes.landscape(net, _images(8), directions, **kw)
    assert json.dumps(again.records) == json.dumps(full.records)  # (NaN-safe comparison)
    assert again.meta["evaluations"] == 2  # points 2 and 3 recomputed
    assert [json.loads(line)["index"] for line in points.read_text().splitlines()
            if line.startswith('{"index"') and line.endswith("}")][-2:] == [2, 3]  # the cut line stayed alone


def test_a_refused_or_failed_call_does_not_poison_its_folder(tmp_path):
    net = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        landscapes.landscape(net, _images(8), n=3, scale=float("nan"), path=tmp_path / "land")
    landscapes.landscape(net, _images(8), n=2, batch_size=8, path=tmp_path / "land")  # the corrected call runs
    with pytest.raises(ValueError, match="seed must be an integer"):
        corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1,), seed=-1,
                                          progress=False)
    corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1,), seed=0,
                                      progress=False, workers=1)


def test_a_changed_landscape_is_refused_naming_what_changed(tmp_path):
    net = models.get_model("resnet_dnn_18", width=4)
    directions = landscapes.random_directions(net, 2)
    landscapes.landscape(net, _images(8), directions, xs=[0.0], ys=[0.0], batch_size=8, path=tmp_path / "run")
    with pytest.raises(ValueError, match="batch_size: 8 -> 4"):
        landscapes.landscape(net, _images(8), directions, xs=[0.0], ys=[0.0], batch_size=4, path=tmp_path / "run")


def test_corrupted_results_are_not_mixed_across_calls_or_models(tmp_path):
    clean = _images()
    cset = corrupted_sets.generate_corrupted(clean, tmp_path, corruptions=["fog"], severities=(1, 2),
                                             progress=False, workers=1)
    model = models.get_model("resnet_dnn_18", width=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    a = robustness.evaluate_corrupted(model, cset, mean=clean.mean, std=clean.std, progress=False)
    assert model.training and all(p.is_contiguous() for p in model.parameters())  # the caller's model as it was
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    b = robustness.evaluate_corrupted(model, cset, mean=clean.mean, std=clean.std, n=5, progress=False)
    with pytest.raises(ValueError, match="different cells or numbers of images"):
        robustness.corruption_summary({"a": a, "b": b})
    robustness.write_corrupted(a, tmp_path / "out", "m")
    with pytest.raises(ValueError, match="overwrite=True"):
        robustness.write_corrupted(b, tmp_path / "out", "m")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        robustness.evaluate_corrupted(model, cset, mean=clean.mean, std=clean.std, n=-1, progress=False)


def test_more_bad_arguments_are_refused_at_the_boundary():
    from ops.analysis import featuremaps
    from ops.evaluate import sweep

    model = models.get_model("resnet_mcdo_18", width=4)
    with pytest.raises(ValueError, match="frames must be uint8"):
        robustness.evaluate_perturbed(model, np.zeros((2, 3, 8, 8, 3), np.float32), mean=(0.5,) * 3,
                                      std=(0.5,) * 3)
    with pytest.raises(ValueError, match="at least one coordinate"):
        landscapes.landscape(model, _images(8), xs=[], ys=[0.0])
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        landscapes.landscape(model, _images(8), n=2, weight_decay=float("nan"))
    images = _images(4).images.float() / 255
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        featuremaps.fourier_profiles(model, images, featuremaps.stage_points(model), samples=0)
    with pytest.raises(ValueError, match="points must be a non-empty list"):
        featuremaps.mc_variance(model, images, [], samples=3)
    with pytest.raises(ValueError, match="at most 1000 MC samples"):
        sweep(model, [(images, torch.zeros(4, dtype=torch.long))], sizes=(1, 10 ** 7))


def test_leaderboard_files_read_back_strictly(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="not a leaderboard CSV"):
        reports.read_leaderboard(empty)
    dup = tmp_path / "d.csv"
    dup.write_bytes(b"\xef\xbb\xbfsize,nll\n1,0.5\n1,0.6\n")
    with pytest.raises(ValueError, match="size 1 appears twice"):
        reports.read_leaderboard(dup)


# --- A third round: what the re-check found ---------------------------------------------------------------------

def test_a_points_line_missing_or_repeating_a_mask_is_recomputed(tmp_path):
    import json

    net, _ = models.add_mc_dropout(models.get_model("resnet_dnn_18", width=4), 0.3)
    directions = landscapes.random_directions(net, 2)
    kw = dict(xs=[0.0, 0.5], ys=[0.0], n_masks=2, batch_size=8, path=tmp_path / "run")
    full = landscapes.landscape(net, _images(8), directions, **kw)
    points = tmp_path / "run" / "points.rank0.jsonl"
    first, second = (json.loads(line) for line in points.read_text().splitlines())
    first["records"] = first["records"][:1]  # masks 1 and the ensemble missing
    second["records"] = second["records"] + second["records"][:1]  # mask 0 twice
    points.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    again = landscapes.landscape(net, _images(8), directions, **kw)
    assert again.meta["evaluations"] == 2 * 2 * 1  # both points, 2 masks, 1 batch: recomputed
    assert json.dumps(again.records) == json.dumps(full.records)


def test_the_official_loader_wants_the_whole_benchmark_even_from_a_generated_folder(tmp_path):
    corrupted_sets.generate_corrupted(_images(), tmp_path, name="cifar-10", corruptions=["fog", "snow"],
                                      severities=(1,), progress=False, workers=1)
    with pytest.raises(corruptions.CorruptedDataNotFoundError, match="incomplete"):
        corrupted_sets.load_cifar_c(tmp_path, "cifar10")
    assert corrupted_sets.load_corrupted(tmp_path / "CIFAR-10-C").corruptions == ["snow", "fog"]


def test_writing_one_stem_never_touches_another_stems_files(tmp_path):
    results = {"sizes": [1], "corrupted": {}}
    robustness.write_corrupted(results, tmp_path, "m_corrupted_v2")
    robustness.write_corrupted(results, tmp_path, "m")  # not refused because of the other stem
    robustness.write_corrupted(results, tmp_path, "m", overwrite=True)
    assert (tmp_path / "m_corrupted_v2_corrupted.json").exists()


def test_results_of_different_corrupted_sets_are_not_compared(tmp_path):
    clean = _images()
    model = models.get_model("resnet_dnn_18", width=4)
    made = [corrupted_sets.generate_corrupted(clean, tmp_path / p, corruptions=["fog"], severities=(1,),
                                              profile=p, progress=False, workers=1) for p in ("cifar", "imagenet")]
    a, b = (robustness.evaluate_corrupted(model, cset, mean=clean.mean, std=clean.std, progress=False)
            for cset in made)
    with pytest.raises(ValueError, match="different corrupted sets"):
        robustness.corruption_summary({"a": a, "b": b})


@pytest.mark.parametrize("labels", [np.array([0.5, 1.0]), np.array([-1, 2]), np.zeros((2, 2), np.int64)])
def test_corrupted_set_labels_must_be_class_indices(tmp_path, labels):
    folder = tmp_path / "X-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(labels, (5,) + (1,) * (labels.ndim - 1)))
    with pytest.raises(ValueError, match="labels must be a 1-D array of non-negative integers"):
        corrupted_sets.load_corrupted(folder)


def test_an_overwritten_export_cut_short_never_pairs_new_weights_with_the_old_card(tmp_path, monkeypatch):
    from ops.train import pretrained

    src = _card_checkpoint(tmp_path)
    first = pretrained.export(src, tmp_path / "root", "v1")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill between the new weights and the new card

    monkeypatch.setattr(pretrained, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrained.export(src, tmp_path / "root", "v1", overwrite=True)
    assert first.exists() and not pretrained.card_path(first).exists()  # unfinished, not "finished with a card"
    with pytest.raises(FileNotFoundError):
        pretrained.load_trained(first)


def test_a_finished_landscape_without_its_points_is_still_a_result(tmp_path):
    net = models.get_model("resnet_dnn_18", width=4)
    kw = dict(xs=[0.0], ys=[0.0], batch_size=8, path=tmp_path / "run")
    landscapes.landscape(net, _images(8), landscapes.random_directions(net, 2), **kw)
    (tmp_path / "run" / "points.rank0.jsonl").unlink()  # only landscape.json kept
    other = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="another landscape"):
        landscapes.landscape(other, _images(8), landscapes.random_directions(other, 2), **kw)


def test_a_points_record_without_a_mask_is_recomputed_not_a_crash(tmp_path):
    import json

    net, _ = models.add_mc_dropout(models.get_model("resnet_dnn_18", width=4), 0.3)
    directions = landscapes.random_directions(net, 2)
    kw = dict(xs=[0.0], ys=[0.0], n_masks=2, batch_size=8, path=tmp_path / "run")
    landscapes.landscape(net, _images(8), directions, **kw)
    points = tmp_path / "run" / "points.rank0.jsonl"
    line = json.loads(points.read_text())
    del line["records"][0]["mask"]
    points.write_text(json.dumps(line) + "\n")
    assert landscapes.landscape(net, _images(8), directions, **kw).meta["evaluations"] == 2


def test_a_corrupted_set_whose_meta_and_labels_disagree_is_refused(tmp_path):
    import json

    cset = corrupted_sets.generate_corrupted(_images(), tmp_path, corruptions=["fog"], severities=(1, 3),
                                             progress=False, workers=1)
    meta = json.loads((cset.folder / "meta.json").read_text())
    meta["severities"] = [1, 2, 3, 4]
    (cset.folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="meta.json says 12 images per severity"):
        corrupted_sets.load_corrupted(cset.folder)
