"""Loss landscapes: filter-normalised directions, the same numbers as the plain loop, fixed MC-dropout masks,
finite NLL, resumable and DDP-split grids, the original's CSV layouts, and the figures."""
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import models
from ops.data import datasets
from ops.analysis import landscapes as L
from ops.analysis import fixed
from ops.analysis import landscape_files as lfiles
from benchmarks.naive_landscape import naive_landscape

ROOT = Path(__file__).resolve().parents[2]
GRID = dict(xs=[-0.5, 0.0, 0.5], ys=[-0.5, 0.5])


def small_net(p=0.3, seed=0):
    """conv-BN-ReLU-MC dropout-blur (a frozen filter buffer)-conv-BN-ReLU-MC dropout-GAP-linear, CIFAR-sized."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
              models.MCDropout(p) if p else nn.Identity(), models.TanhBlurBlock(4, sfilter=(1, 2, 1)),
              nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
              models.MCDropout(p) if p else nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)]
    net = nn.Sequential(*layers)
    for bn in (net[1], net[6]):  # non-trivial statistics and affine parameters: eval() must use them
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        with torch.no_grad():
            bn.weight.normal_(1, 0.2)
            bn.bias.normal_(0, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def data():
    return datasets.synthetic(n_train=8, n_test=40)[1]


def test_filter_normalisation_matches_each_output_filter():
    net = small_net()
    net[0].weight.requires_grad_(False)  # frozen: never moved
    d = L.random_directions(net, n=2, seed=0)
    assert len(d) == 2 and "0.weight" not in d[0]
    assert not any(name.endswith(("running_mean", "running_var", "filter")) for name in d[0])  # no buffers
    for name, p in net.named_parameters():
        if name not in d[0]:
            continue
        t = d[0][name]
        if p.ndim <= 1:  # BatchNorm weights and biases, biases: zero
            assert torch.count_nonzero(t) == 0, name
        else:  # each output filter (a Linear: each row) has the norm of the same filter of the weights
            torch.testing.assert_close(t.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5,
                                       atol=0)
    orig = L.random_directions(net, n=1, seed=0, norm="original")[0]["5.weight"]  # the original's axis: dim 0
    torch.testing.assert_close(orig.norm(dim=0), net[5].weight.detach().norm(dim=0), rtol=1e-5, atol=0)
    assert not torch.allclose(orig.flatten(1).norm(dim=1), net[5].weight.detach().flatten(1).norm(dim=1))
    again = L.random_directions(net, n=2, seed=0)
    other = L.random_directions(net, n=2, seed=1)
    assert all(torch.equal(again[0][k], d[0][k]) for k in d[0])
    assert not torch.equal(other[0]["5.weight"], d[0]["5.weight"])


def test_landscape_equals_the_plain_loop_and_leaves_the_model_alone(data):
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    dirs = L.random_directions(net, 2, seed=0)
    land = L.landscape(net, data, dirs, n_masks=2, batch_size=16, **GRID)
    naive = naive_landscape(net, data, dirs, n_masks=2, batch_size=16, masks="fixed", **GRID)
    assert len(naive) == 6 * 2 and land.shape == (2, 3) and land.masks == [L.ENSEMBLE, 0, 1]
    for ref in naive:
        ours = next(r for r in land.records if r["index"] == ref["index"] and r["mask"] == ref["mask"])
        for key in ("nll", "acc", "ece", "brier", "acc_90", "iou", "auroc"):
            assert ours[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights restored bitwise
    assert all(torch.equal(buffers[k], v) for k, v in net.named_buffers())  # no mask buffer left behind
    assert models.is_stochastic(net) and not net.training  # MC dropout switched back on
    # the ensemble record is the mean probability of the two masks
    assert land.grid("nll", L.ENSEMBLE).shape == (2, 3) and "mutual_info" in land.records[-1]


def test_masks_are_fixed_across_points_and_differ_between_masks(data):
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    a = L.landscape(net, data, dirs, xs=[0.3, -0.2, 0.3], ys=[0.1], n_masks=2, batch_size=16)
    b = L.landscape(net, data, dirs, xs=[0.3], ys=[0.1], n_masks=2, batch_size=16)  # another grid, same point
    nll = a.grid("nll", 0)[0]
    assert nll[0] == nll[2] == b.grid("nll", 0)[0, 0]  # the same mask wherever and whenever the point comes
    assert a.grid("nll", 1)[0, 0] != nll[0]  # another mask, another landscape
    c = L.landscape(net, data, dirs, xs=[0.3], ys=[0.1], n_masks=2, batch_size=16, seed=1)
    assert c.grid("nll", 0)[0, 0] != nll[0]  # the seed chooses the masks


def test_batched_points_and_uncached_masks_give_the_same_numbers(data):
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    seq = L.landscape(net, data, dirs, n_masks=2, batch_size=16, **GRID)
    vm = L.landscape(net, data, dirs, n_masks=2, batch_size=16, points_per_pass=4, **GRID)
    redrawn = L.landscape(net, data, dirs, n_masks=2, batch_size=16, cache_masks=False, **GRID)
    plain_layout = L.landscape(net, data, dirs, n_masks=2, batch_size=16, channels_last=False, **GRID)
    assert all(p.is_contiguous() for p in net.parameters())  # the model's layout is back
    for other in (vm, redrawn, plain_layout):
        for key in ("nll", "acc", "ece", "l2"):
            np.testing.assert_allclose(other.grid(key, 0), seq.grid(key, 0), rtol=1e-5)
            np.testing.assert_allclose(other.grid(key, L.ENSEMBLE), seq.grid(key, L.ENSEMBLE), rtol=1e-5)


def test_nll_stays_finite_where_probabilities_underflow(data):
    net = small_net(p=0)
    with torch.no_grad():
        net[-1].weight.mul_(1e4)  # logits of +-1e3 and more: softmax probabilities of exactly 0
    land = L.landscape(net, data, [L.random_directions(net, 1, seed=0)[0]], xs=[0.0], batch_size=40)
    batch = fixed.prepare_batches(data, None, 40)[0]
    with torch.no_grad():
        expected = -torch.log_softmax(net(batch[0]), -1).gather(1, batch[1][:, None]).double().mean()
    assert np.isfinite(land.grid("nll")[0]) and land.grid("nll")[0] > 87.4  # beyond the probability floor
    assert land.grid("nll")[0] == pytest.approx(float(expected), rel=1e-5)


def test_weight_norms_and_weight_decay_loss(data):
    net = small_net(p=0)
    d = L.random_directions(net, 1, seed=0)[0]
    land = L.landscape(net, data, [d], xs=[0.7], batch_size=40, weight_decay=5e-4)
    moved = [p.detach() + 0.7 * d[n] if n in d else p.detach() for n, p in net.named_parameters()]
    l2 = torch.cat([w.flatten() for w in moved]).double().norm().item()
    rec = land.records[0]
    assert rec["l2"] == pytest.approx(l2, rel=1e-6)
    assert rec["l1"] == pytest.approx(torch.cat([w.flatten() for w in moved]).abs().double().sum().item(), rel=1e-6)
    assert rec["loss"] == pytest.approx(rec["nll"] + 5e-4 / 2 * l2 ** 2, rel=1e-9)


def test_direction_between_two_checkpoints_interpolates(data):
    a, b = small_net(p=0, seed=0), small_net(p=0, seed=1)
    b.load_state_dict({**b.state_dict(), **{k: v for k, v in a.state_dict().items() if "running" in k}})
    d = L.direction_between(a, b)
    assert torch.count_nonzero(d["1.weight"]) > 0  # BatchNorm's affine parameters move too
    land = L.landscape(a, data, [d], xs=[0.0, 1.0], batch_size=40)
    at_b = L.landscape(b, data, [L.random_directions(b, 1)[0]], xs=[0.0], batch_size=40)
    assert land.grid("nll")[1] == pytest.approx(at_b.grid("nll")[0], rel=1e-5)
    assert land.grid("acc")[1] == at_b.grid("acc")[0]


def test_resume_skips_finished_points_and_refuses_another_landscape(data, tmp_path):
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    kw = dict(n_masks=2, batch_size=16, **GRID)
    full = L.landscape(net, data, dirs, **kw)

    def stop_after_three(index, records):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        L.landscape(net, data, dirs, path=tmp_path / "run", on_point=stop_after_three, **kw)
    with open(tmp_path / "run" / "points.rank0.jsonl", "a") as f:
        f.write('{"index": 3, "records": [{"nll"')  # a line cut by a crash: recomputed
    resumed = L.landscape(net, data, dirs, path=tmp_path / "run", **kw)
    batches = 3  # 40 images in batches of 16
    assert resumed.meta["evaluations"] == 3 * 2 * batches  # only the 3 unfinished points, 2 masks each
    assert resumed.records == full.records
    assert lfiles.Landscape.load(tmp_path / "run" / "landscape.json").records == full.records
    with pytest.raises(ValueError, match="another landscape"):
        L.landscape(net, data, dirs, path=tmp_path / "run", **{**kw, "n_masks": 3})


def test_resume_refuses_other_weights_even_where_the_directions_do_not_move(data, tmp_path):
    """BatchNorm statistics, the blur filter and biases are not moved by the directions: a landscape of a model
    that differs only there is another landscape, refused with the field named."""
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    kw = dict(n_masks=2, batch_size=16, path=tmp_path / "run", **GRID)
    L.landscape(net, data, dirs, **kw)
    other = copy.deepcopy(net)
    other[1].running_var.mul_(2)  # a buffer only
    with pytest.raises(ValueError, match="weights"):
        L.landscape(other, data, dirs, **kw)
    other = copy.deepcopy(net)
    other.name = "resnet_mcdo_smoothing_18"  # the same weights under another model's name
    with pytest.raises(ValueError, match="model: 'Sequential' -> 'resnet_mcdo_smoothing_18'"):
        L.landscape(other, data, dirs, **kw)


def test_points_without_meta_are_not_trusted(data, tmp_path):
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "points.rank0.jsonl").write_text('{"index": 0, "records": [{"mask": 0, "nll": 0.1}]}\n')
    with pytest.raises(ValueError, match="no meta.json"):
        L.landscape(net, data, dirs, batch_size=16, path=tmp_path / "run", **GRID)


def test_a_second_writer_on_a_landscape_folder_is_refused_naming_the_first(data, tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from models.atomic import exclusive
        with exclusive({str(folder / 'lock.rank0')!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        net = small_net()
        with pytest.raises(RuntimeError, match=f"in use by pid {holder.pid}"):
            L.landscape(net, data, L.random_directions(net, 2), batch_size=16, path=folder, **GRID)
        assert not (folder / "points.rank0.jsonl").exists()  # nothing computed, nothing written
    finally:
        holder.kill()
        holder.wait()
    net = small_net()  # the lock dies with its holder: the folder is usable again
    L.landscape(net, data, L.random_directions(net, 2), batch_size=16, path=folder, **GRID)


def test_csv_has_the_original_layout_and_reads_back(data, tmp_path):
    net = small_net()
    land = L.landscape(net, data, L.random_directions(net, 2), n_masks=2, batch_size=40, **GRID)
    path = land.to_csv(tmp_path / "a.csv", mask=1)
    rows = path.read_text().strip().splitlines()
    assert len(rows) == 6 and all(len(r.split(",")) == 17 for r in rows)
    assert [float(v) for v in rows[1].split(",")[:5]] == [0.0, -0.5, land.grid("nll", 1)[0, 1], 0.0, 0.9]
    back = lfiles.read_csv(path)
    assert back.meta["source"] == "original" and back.shape == (2, 3)
    for key in ("nll", "acc", "ece", "ece_signed", "iou_90", "freq_90", "top5", "brier"):
        np.testing.assert_allclose(back.grid(key), land.grid(key, 1), rtol=1e-12)
    successor = land.to_csv(tmp_path / "s.csv", layout="successor")
    back = lfiles.read_csv(successor)
    assert back.meta["source"] == "successor"
    np.testing.assert_allclose(back.grid("l2"), land.grid("l2", 0), rtol=1e-12)
    sixteen = tmp_path / "16.csv"  # the original's older files: no ECSE column
    sixteen.write_text("\n".join(",".join(r.split(",")[:16]) for r in rows) + "\n")
    np.testing.assert_allclose(lfiles.read_csv(sixteen).grid("ece"), land.grid("ece", 1), rtol=1e-12)
    bad = tmp_path / "15.csv"
    bad.write_text("\n".join(",".join(r.split(",")[:15]) for r in rows) + "\n")
    with pytest.raises(ValueError, match="15 columns"):
        lfiles.read_csv(bad)


def test_bad_directions_and_settings_name_the_problem(data):
    net = small_net()
    d = L.random_directions(net, 1)[0]
    with pytest.raises(ValueError, match="'1.running_mean', which is not a parameter"):
        L.landscape(net, data, [{**d, "1.running_mean": torch.zeros(4)}], xs=[0.0])
    with pytest.raises(ValueError, match="shape"):
        L.landscape(net, data, [{**d, "0.weight": torch.zeros(3)}], xs=[0.0])
    with pytest.raises(ValueError, match="1 direction .* or 2"):
        L.landscape(net, data, [d, d, d], xs=[0.0])
    with pytest.raises(ValueError, match="no active MC dropout"):
        L.landscape(small_net(p=0), data, [d], xs=[0.0], n_masks=2)
    with pytest.raises(ValueError, match="norm must be one of"):
        L.random_directions(net, norm="per-filter")


def test_two_processes_split_the_grid_and_agree_with_one(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT / 'tests' / 'analysis')!r})
        from ops.data import datasets
        from ops.analysis import landscapes as L
        from ops.train import distributed
        from test_landscapes import small_net
        rank, world, device = distributed.init_distributed("cpu")
        net = small_net()
        data = datasets.synthetic(n_train=8, n_test=24)[1]
        L.landscape(net, data, L.random_directions(net, 2), n=3, n_masks=2, batch_size=12, path=sys.argv[1])
        if world > 1:
            torch.distributed.destroy_process_group()
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for cmd, out in (([sys.executable], "one"),
                     ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "two")):
        proc = subprocess.run(cmd + [str(script), str(tmp_path / out)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "landscape.json").read_text())
    two = json.loads((tmp_path / "two" / "landscape.json").read_text())
    assert one["records"] == two["records"] and len(one["records"]) == 9 * 3
    shares = [len((tmp_path / "two" / f"points.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert shares == [5, 4]  # the 9 points were split round robin


def test_figures_and_the_mask_animation_are_written(tmp_path):
    from ops.plots import landscapes as plots
    from ops.plots import save_figure

    def fake(bump, ys=(-1.0, 0.0, 1.0)):  # a bowl whose curvature grows with bump, 2 masks and the ensemble
        xs = [-1.0, 0.0, 1.0]
        recs = [{"index": iy * 3 + ix, "mask": m, "x": x, "y": y, "loss": bump * (x * x + y * y) + 0.1 * m}
                for m in (0, 1, -1) for iy, y in enumerate(ys) for ix, x in enumerate(xs)]
        return lfiles.Landscape(xs, list(ys), recs)

    lands = {"MC dropout": fake(2.0), "+ smoothing": fake(1.0)}
    for kind in ("contourf", "contour", "surface"):
        save_figure(plots.landscape_figure(lands, kind=kind), tmp_path / f"{kind}.png")
    save_figure(plots.curves_figure(lands), tmp_path / "curves.png")
    gif = plots.animate_masks(lands, tmp_path / "masks.gif", kind="contourf")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 3  # masks 0 and 1, then the MC ensemble of both
    save_figure(plots.spectrum_figure({"a": [1.0, 2.0, 2.5], "b": {"eigenvalues": [0.5, 0.7, 1.0]}}),
                tmp_path / "spectrum.png")
    save_figure(plots.density_figure({"a": {"nodes": [[0.0, 1.0]], "weights": [[0.5, 0.5]]}}), tmp_path / "d.png")
    assert {p.name for p in tmp_path.iterdir()} >= {"contourf.png", "contour.png", "surface.png", "curves.png",
                                                    "spectrum.png", "d.png"}
    with pytest.raises(ValueError, match="kind must be"):
        plots.landscape_figure(lands, kind="heatmap")


def test_side_by_side_panels_of_one_grid_label_its_y_ticks_once():
    """Panels on the same grid leave the y tick labels to the first (they would run into the panel on their
    left); a panel on another grid keeps its own."""
    from ops.plots import landscapes as plots

    def fake(ys):
        xs = [-1.0, 0.0, 1.0]
        return lfiles.Landscape(xs, list(ys), [{"index": iy * 3 + ix, "mask": 0, "x": x, "y": y, "loss": x * x + y * y}
                                               for iy, y in enumerate(ys) for ix, x in enumerate(xs)])

    same, other = fake((-1.0, 0.0, 1.0)), fake((-2.0, 0.0, 2.0))
    fig = plots.landscape_figure({"a": same, "b": same, "c": other})
    fig.canvas.draw()
    shown = [any(t.get_visible() and t.get_text() for t in ax.get_yticklabels()) for ax in fig.axes[:3]]
    assert shown == [True, False, True]


def test_roughness_ignores_any_quadratic_and_measures_the_bumps_left():
    """A bowl or saddle of any steepness is perfectly regular (0); bumps added to it count exactly as bumps alone
    (the quadratic part is removed) and scale with their size; a single spike at one point of an n x n grid
    leaves about its height / n."""
    from ops.analysis.landscapes import roughness

    xs = ys = np.linspace(-0.1, 0.1, 21)
    x, y = np.meshgrid(xs, ys)
    bowl = 40 * x * x - 25 * x * y + 7 * y * y + 3 * x - y + 0.3
    assert roughness(bowl, xs, ys) < 1e-12 and roughness(-bowl, xs, ys) < 1e-12
    bumps = np.random.default_rng(0).normal(0, 0.01, x.shape)
    assert roughness(bowl + bumps, xs, ys) == pytest.approx(roughness(bumps, xs, ys), rel=1e-9)
    assert roughness(5 * bumps, xs, ys) == pytest.approx(5 * roughness(bumps, xs, ys), rel=1e-9)
    assert roughness(bumps, xs, ys) == pytest.approx(np.sqrt(np.mean(bumps ** 2) * 435 / 441), rel=0.03)  # 6 fitted
    spike = np.zeros_like(x)
    spike[7, 13] = 1.0
    assert roughness(spike, xs, ys) == pytest.approx(1 / 21, rel=0.05)


def test_masks_stacked_in_one_pass_give_the_same_numbers(data):
    net = small_net()
    dirs = L.random_directions(net, 2, seed=0)
    one = L.landscape(net, data, dirs, n_masks=3, batch_size=16, masks_per_pass=1, **GRID)
    stacked = L.landscape(net, data, dirs, n_masks=3, batch_size=16, masks_per_pass=2, points_per_pass=2, **GRID)
    for m in (0, 1, 2, L.ENSEMBLE):
        np.testing.assert_allclose(stacked.grid("nll", m), one.grid("nll", m), rtol=1e-5)
        np.testing.assert_allclose(stacked.grid("ece", m), one.grid("ece", m), rtol=1e-4, atol=1e-6)
    assert stacked.meta["evaluations"] == one.meta["evaluations"]  # counted per (point, mask, batch) pass


def test_the_summary_of_a_quadratic_bowl_is_its_known_rise_curvature_and_spread():
    """loss = a (x^2 + y^2) + c_mask on a 5 x 5 grid: the second difference is exactly 2a on both axes, the mean
    rise is a * mean(x^2 + y^2), and two masks offset by 0 and 0.2 spread by 0.1 everywhere."""
    from ops.analysis.landscape_files import Landscape
    from ops.analysis.landscapes import summary

    xs = ys = [-1.0, -0.5, 0.0, 0.5, 1.0]
    a = 3.0
    records = [{"index": i * 5 + j, "mask": m, "x": x, "y": y, "loss": a * (x * x + y * y) + 0.2 * m}
               for m in (0, 1) for i, y in enumerate(ys) for j, x in enumerate(xs)]
    s = summary(Landscape(xs, ys, records, {}))
    np.testing.assert_allclose(s["curvature"], [2 * a, 2 * a])
    np.testing.assert_allclose(s["rise"], [a * 2 * np.mean(np.square(xs))] * 2)
    np.testing.assert_allclose(s["spread"], np.full(25, 0.1))
    np.testing.assert_allclose(s["roughness"], [0.0, 0.0], atol=1e-12)  # a bowl is perfectly regular
    assert s["mean_curvature"] == pytest.approx(2 * a)
    with pytest.raises(ValueError, match="odd number"):
        summary(Landscape(xs[:4], ys[:4], [r for r in records if r["x"] != 1.0 and r["y"] != 1.0], {}))
