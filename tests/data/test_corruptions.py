"""Corrupted / perturbed data (ops.data) and robustness metrics (ops.analysis.robustness), on tiny images."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from ops.data import corruptions as oc
from ops.data import corrupted_sets as csets
from ops.analysis import robustness as rb
from ops.data.datasets import ImageTensorDataset, synthetic


@pytest.fixture(scope="module")
def images():
    return synthetic(n_train=1, n_test=24, seed=3)[1]  # 24 colour images, 3x32x32, 10 classes


def _official_layout(folder, n, corruptions=("fog",), hw=8):
    """An official-style -C folder: row r of every file holds the value r % 251, labels r % 7."""
    folder.mkdir(parents=True)
    rows = np.arange(5 * n)
    for c in corruptions:
        np.save(folder / f"{c}.npy", np.broadcast_to((rows % 251).astype(np.uint8)[:, None, None, None],
                                                     (5 * n, hw, hw, 3)).copy())
    np.save(folder / "labels.npy", (rows % 7).astype(np.uint8))
    return folder


# --- Official layout --------------------------------------------------------------------------------------------

def test_severity_s_is_rows_n_s_minus_1_to_n_s(tmp_path):
    cset = csets.load_corrupted(_official_layout(tmp_path / "CIFAR-10-C", n=4))
    assert cset.n == 4 and cset.severities == (1, 2, 3, 4, 5) and cset.corruptions == ["fog"]
    for s in range(1, 6):
        rows = torch.arange(4 * (s - 1), 4 * s)
        assert torch.equal(cset.images("fog", s)[:, 0, 0, 0].long(), rows % 251)
        assert torch.equal(cset.labels(s), rows % 7)
    assert cset.images("fog", 2).shape == (4, 3, 8, 8)  # (N, C, H, W) from the stored (N, H, W, C)
    with pytest.raises(ValueError, match="severity 6"):
        cset.images("fog", 6)


def test_load_cifar_c_finds_the_folder_and_numpy2_reads_it(tmp_path):
    # The original loader used np.long, which NumPy 2 removed; ours reads uint8 labels as int64.
    assert int(np.__version__.split(".")[0]) >= 2
    _official_layout(tmp_path / "CIFAR-100-C", n=3, corruptions=("saturate",) + oc.CORRUPTIONS)
    cset = csets.load_cifar_c(tmp_path, "cifar100")
    assert cset.corruptions == list(oc.CORRUPTIONS) + ["saturate"]  # standard order, then the extra ones
    assert cset.labels(1).dtype == torch.int64
    ds = cset.dataset("saturate", 5, mean=(0.5,) * 3, std=(0.25,) * 3, classes=list("abcdefg"))
    assert isinstance(ds, ImageTensorDataset) and len(ds) == 3


def test_missing_set_names_path_layout_and_source(tmp_path):
    with pytest.raises(oc.CorruptedDataNotFoundError) as err:
        csets.load_cifar_c(tmp_path, "cifar10")
    msg = str(err.value)
    assert str(tmp_path / "CIFAR-10-C") in msg and "labels.npy" in msg and "10000(s-1)" in msg
    assert "zenodo.org/record/2535967" in msg and "generate_corrupted" in msg
    with pytest.raises(oc.CorruptedDataNotFoundError, match=r"\{wnid\}/\*\.JPEG"):
        csets.imagenet_c(tmp_path, "fog", 3)
    with pytest.raises(oc.CorruptedDataNotFoundError, match="CIFAR-10-P.tar"):
        csets.load_perturbed(tmp_path / "CIFAR-10-P", "translate")


def test_archive_with_wrong_md5_is_refused(tmp_path):
    buf = io.BytesIO(b"not the official data")
    with tarfile.open(tmp_path / "CIFAR-10-C.tar", "w") as tar:
        info = tarfile.TarInfo("CIFAR-10-C/labels.npy")
        info.size = len(buf.getvalue())
        tar.addfile(info, buf)
    with pytest.raises(ValueError, match="md5 .* expected 56bf5dcef84df0e2308c6dcbcbbd8499"):
        csets.load_cifar_c(tmp_path, "cifar10")
    assert not (tmp_path / "CIFAR-10-C").exists()  # nothing was unpacked


def test_archive_with_right_md5_is_unpacked(tmp_path, monkeypatch):
    _official_layout(tmp_path / "src" / "CIFAR-10-C", n=2, corruptions=oc.CORRUPTIONS)
    with tarfile.open(tmp_path / "CIFAR-10-C.tar", "w") as tar:
        tar.add(tmp_path / "src" / "CIFAR-10-C", arcname="CIFAR-10-C")
    md5 = csets.md5sum(tmp_path / "CIFAR-10-C.tar")
    monkeypatch.setitem(oc.OFFICIAL_C, "cifar10", {**oc.OFFICIAL_C["cifar10"], "md5": md5})
    assert csets.load_cifar_c(tmp_path, "cifar10").n == 2


def test_a_partial_official_set_is_refused_naming_what_is_missing(tmp_path):
    """A copy or unpacking cut short would otherwise average over the corruptions that happen to be there."""
    _official_layout(tmp_path / "CIFAR-10-C", n=2, corruptions=oc.CORRUPTIONS[:2])
    with pytest.raises(oc.CorruptedDataNotFoundError, match="incomplete: .*impulse_noise.npy"):
        csets.load_cifar_c(tmp_path, "cifar10")


# --- Generation ----------------------------------------------------------------------------------------------------

def test_generated_set_round_trips_through_the_official_loader(tmp_path, images):
    corr = ["gaussian_noise", "contrast", "pixelate"]
    csets.generate_corrupted(images, tmp_path, name="cifar-10", corruptions=corr, seed=5, workers=1, progress=False)
    raw = np.load(tmp_path / "CIFAR-10-C" / "contrast.npy")
    assert raw.shape == (5 * 24, 32, 32, 3) and raw.dtype == np.uint8
    # The layout is the official one: the generic loader reads it as CIFAR-10-C; the official loader itself wants
    # all 15 corruptions of the benchmark (a partial set would silently shrink mCE) and refuses this one.
    cset = csets.load_corrupted(tmp_path / "CIFAR-10-C")
    assert cset.corruptions == corr and cset.n == 24
    with pytest.raises(oc.CorruptedDataNotFoundError, match="incomplete"):
        csets.load_cifar_c(tmp_path, "cifar10")
    for c in corr:
        for s in (1, 4):
            assert torch.equal(cset.images(c, s), oc.corrupt(images.images, c, s, seed=5))
            assert torch.equal(cset.labels(s), images.labels)
    meta = json.loads((tmp_path / "CIFAR-10-C" / "meta.json").read_text())
    assert meta["profile"] == "cifar"  # 32 px -> CIFAR-C severities
    assert meta["params"]["gaussian_noise"]["5"] == {"sigma": 0.10}
    assert meta["params"]["pixelate"]["1"] == {"scale": 0.95, "upscale": "box"}


def test_generation_resumes_and_refuses_other_settings(tmp_path, images):
    small = images.subset(6)
    first = csets.generate_corrupted(small, tmp_path, corruptions=["fog"], severities=(2, 3), workers=1, progress=False)
    fog = first.folder / "fog.npy"
    stamp = fog.stat().st_mtime_ns
    second = csets.generate_corrupted(small, tmp_path, corruptions=["fog", "snow"], severities=(2, 3), workers=1,
                                   progress=False)
    assert fog.stat().st_mtime_ns == stamp  # kept, not regenerated
    assert second.corruptions == ["snow", "fog"] and second.severities == (2, 3)
    assert torch.equal(second.images("fog", 3), oc.corrupt(small.images, "fog", 3))
    with pytest.raises(ValueError, match="seed differ.*overwrite=True"):
        csets.generate_corrupted(small, tmp_path, corruptions=["fog"], severities=(2, 3), seed=1, progress=False)


def test_parallel_generation_equals_serial(tmp_path, images):
    small = images.subset(4)
    cset = csets.generate_corrupted(small, tmp_path, corruptions=["shot_noise", "motion_blur"], severities=(3,),
                                 workers=2, progress=False)
    for c in ("shot_noise", "motion_blur"):
        assert torch.equal(cset.images(c, 3), oc.corrupt(small.images, c, 3))


def test_seeded(images):
    a = oc.corrupt(images.images, "impulse_noise", 2, seed=0)
    assert torch.equal(a, oc.corrupt(images.images, "impulse_noise", 2, seed=0))
    assert not torch.equal(a, oc.corrupt(images.images, "impulse_noise", 2, seed=1))


def test_grey_images_are_corrupted_as_grey(images):
    grey = images.images[:, :1].expand(-1, 3, -1, -1).contiguous()
    for c in ("frost", "spatter", "snow", "jpeg_compression"):
        out = oc.corrupt(grey, c, 3)
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2]), c
        assert not torch.equal(out, grey), c


def test_severities_grow(images):
    # Harsher severity, larger change, for the monotone corruptions of the cifar profile.
    x = images.images.float()
    for c in ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression", "zoom_blur"):
        change = [(oc.corrupt(images.images, c, s).float() - x).abs().mean().item() for s in (1, 3, 5)]
        assert change[0] < change[1] < change[2], (c, change)


def test_bad_input_is_refused_with_the_fix(images):
    with pytest.raises(ValueError, match="uint8 tensor"):
        oc.corrupt(images.images.float(), "fog", 1)
    with pytest.raises(ValueError, match="did you mean.*gaussian_noise"):
        oc.corrupt(images.images, "gaussian", 1)
    with pytest.raises(ValueError, match="severity"):
        oc.parameters("fog", 0)
    with pytest.raises(ValueError, match="ImageTensorDataset"):
        csets.generate_corrupted(list(images.images), "/nonexistent")


# Same parameters -> same statistics as the imagecorruptions package (ImageNet-C severities).
@pytest.mark.parametrize("corruption", oc.ALL_CORRUPTIONS)
def test_imagenet_profile_matches_the_package(corruption, images):
    from imagecorruptions import corrupt as package_corrupt

    x = images.images
    severity = 3 if corruption != "spatter" else 2  # spatter 1 divides by zero in the package (NaN pixels)
    ours = oc.corrupt(x, corruption, severity, profile="imagenet", seed=0).float()
    np.random.seed(0)
    ref = torch.stack([torch.from_numpy(np.array(package_corrupt(im.permute(1, 2, 0).numpy(), severity,
                                                                 corruption))).permute(2, 0, 1) for im in x]).float()
    x = x.float()
    # Within 10% (+ 1.5 grey levels) of each statistic: mean |change|, mean shift, spread.
    for stat in (lambda y: (y - x).abs().mean(), lambda y: y.mean() - x.mean(), lambda y: y.std()):
        a, b = stat(ours).item(), stat(ref).item()
        assert abs(a - b) <= 0.1 * abs(b) + 1.5, (a, b)
    if corruption in ("defocus_blur", "zoom_blur", "contrast", "brightness", "saturate", "pixelate",
                      "gaussian_blur"):  # deterministic: the same image, up to rounding
        assert (ours - ref).abs().mean().item() < 0.6


# --- Perturbation sequences --------------------------------------------------------------------------------------

def test_generated_perturbation_sequences(tmp_path, images):
    small = images.subset(3)
    folder = csets.generate_perturbed(small, tmp_path, ptypes=("translate", "gaussian_noise", "brightness"),
                                   progress=False)
    tr = csets.load_perturbed(folder, "translate")
    assert tr.shape == (3, 16, 32, 32, 3)  # CIFAR-10-P's translate has 16 frames, shifts -7..8
    clean = small.images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(tr[:, 7], clean)  # shift 0
    assert np.array_equal(tr[:, 8, :, 1:], clean[:, :, :-1])  # one pixel to the right
    noise = csets.load_perturbed(folder, "gaussian_noise")
    assert noise.shape[1] == 31 and np.array_equal(noise[:, 0], clean) and not np.array_equal(noise[:, 1], clean)
    assert np.array_equal(csets.load_perturbed(folder, "brightness")[:, 15], clean)  # shift 0


def test_flip_probability_consistency_and_cec_by_hand():
    preds = torch.tensor([[0, 1, 1, 1, 1], [2, 2, 0, 2, 2]])
    # noise: against frame 0 -> video 1 flips 4/4, video 2 flips 1/4; consecutive -> 1/4 and 2/4
    assert rb.flip_probability(preds, noise=True) == pytest.approx(5 / 8)
    assert rb.flip_probability(preds, noise=False) == pytest.approx(3 / 8)
    assert rb.consistency(preds) == pytest.approx(5 / 8)
    p = torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]])  # (1 video, 2 frames, 3 classes)
    hand = -(0.25 * np.log(0.5) + 0.5 * np.log(0.25) + 0.25 * np.log(0.25)) / 3
    assert rb.cross_entropy_consistency(p.log()) == pytest.approx(hand)
    with pytest.raises(ValueError, match="T >= 2"):
        rb.flip_probability(preds[:, :1], noise=False)


class MeanBrightness(nn.Module):
    """Toy classifier: class = how bright the image is, in `k` bands (logits peak at the band of the mean)."""

    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.centres = nn.Parameter(torch.linspace(0, 1, k), requires_grad=False)

    def forward(self, x):
        m = x.mean((1, 2, 3))  # (B,) in [0, 1] with mean 0, std 1 normalisation
        return -50 * (m[:, None] - self.centres[None]) ** 2  # (B, k)

    def predict(self, images):  # the same decision by hand on uint8 images
        m = images.float().div(255).mean((1, 2, 3))
        return (m[:, None] - self.centres[None]).abs().argmin(1)


def test_evaluate_perturbed_on_a_hand_made_sequence():
    model = MeanBrightness(k=5)  # five classes: any number of classes works
    levels = torch.tensor([[0, 0, 255, 255, 128], [64, 64, 64, 64, 64]], dtype=torch.uint8)  # (N=2, T=5)
    frames = levels[:, :, None, None, None].expand(2, 5, 4, 4, 3).contiguous()  # (N, T, H, W, C)
    preds = model.predict(frames.flatten(0, 1).permute(0, 3, 1, 2)).view(2, 5)
    out = rb.evaluate_perturbed(model, frames, mean=(0.0,) * 3, std=(1.0,) * 3, sizes=(1, 2), noise=False)
    assert out[1]["flip_prob"] == pytest.approx(rb.flip_probability(preds, noise=False)) == pytest.approx(2 / 8)
    assert out[1]["consistency"] == pytest.approx(6 / 8)
    assert out[2] == pytest.approx(out[1])  # a deterministic model: every ensemble size is the same
    log_probs = torch.log_softmax(model(frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255), -1).view(2, 5, 5)
    assert out[1]["cec"] == pytest.approx(rb.cross_entropy_consistency(log_probs), rel=1e-5)
    noise = rb.evaluate_perturbed(model, frames.numpy(), mean=(0.0,) * 3, std=(1.0,) * 3, noise=True)
    assert noise[1]["flip_prob"] == pytest.approx(3 / 8)


# --- Corrupted-set metrics -------------------------------------------------------------------------------------

def test_mce_and_relative_mce_by_hand(tmp_path):
    model = MeanBrightness(k=3)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (40,), generator=g)
    levels = (labels * 110 + torch.randint(0, 60, (40,), generator=g)).clamp(0, 255).to(torch.uint8)
    imgs = levels[:, None, None, None].expand(40, 3, 32, 32).contiguous()
    clean = ImageTensorDataset(imgs, labels, ["dark", "mid", "bright"], (0.0,) * 3, (1.0,) * 3, "toy")
    cset = csets.generate_corrupted(clean, tmp_path, corruptions=["brightness", "contrast"], severities=(1, 3, 5),
                                 workers=1, progress=False)
    results = rb.evaluate_corrupted(model, cset, sizes=(1, 2), mean=clean.mean, std=clean.std, clean=clean,
                                    batch_size=16, progress=False)
    # By hand: errors per cell from the toy model's rule on the stored images.
    clean_err = (model.predict(imgs) != labels).double().mean().item()
    hand = {c: {s: (model.predict(cset.images(c, s)) != labels).double().mean().item() for s in (1, 3, 5)}
            for c in ("brightness", "contrast")}
    got = rb.mce(rb.errors(results, 1), clean_err)
    for c in hand:
        assert got["ce"][c] == pytest.approx(np.mean(list(hand[c].values())))
        assert got["relative_ce"][c] == pytest.approx(np.mean([e - clean_err for e in hand[c].values()]))
    assert got["mce"] == pytest.approx(np.mean([np.mean(list(h.values())) for h in hand.values()]))
    assert got["relative_mce"] == pytest.approx(np.mean([np.mean([e - clean_err for e in h.values()])
                                                         for h in hand.values()]))
    # AlexNet-normalised, with the published errors at the same severities, mapped by name.
    alex = rb.mce(hand, clean_err, reference="alexnet")
    ce_b = sum(hand["brightness"].values()) / (0.4514 + 0.54048 + 0.7244)
    rel_b = sum(e - clean_err for e in hand["brightness"].values()) / (0.4514 + 0.54048 + 0.7244 - 3 * 0.43478)
    assert alex["ce"]["brightness"] == pytest.approx(ce_b)
    assert alex["relative_ce"]["brightness"] == pytest.approx(rel_b)
    with pytest.raises(ValueError, match="15 standard corruptions"):
        rb.mce({"spatter": {1: 0.5}}, reference="alexnet")
    rows = rb.corruption_summary({"toy": results})
    assert [r["size"] for r in rows] == [1, 2] and rows[0]["mce"] == pytest.approx(got["mce"])
    assert rows[0]["clean_error"] == pytest.approx(clean_err)
    assert "| toy | 1 |" in rb.format_summary(rows)


def test_corrupted_csv_has_the_original_layout(tmp_path):
    m = {"nll": 1.0, "acc": 0.5, "acc_0": 0.5, "acc_90": 0.9, "unc_0": 0.0, "unc_90": 0.7, "iou_0": 0.3,
         "iou_90": 0.4, "freq_0": 1.0, "freq_90": 0.2, "top5": 1.0, "brier": 0.6, "ece": 0.1, "ece_signed": 0.05}
    results = {"sizes": [1, 2], "clean": {1: m, 2: m}, "corrupted": {"fog": {1: {1: m, 2: m}, 2: {1: m, 2: m}}}}
    paths = rb.write_corrupted(results, tmp_path, "toy_model_uid")
    assert [p.name for p in paths] == ["toy_model_uid_corrupted_n1.csv", "toy_model_uid_corrupted_n2.csv",
                                       "toy_model_uid_corrupted.json"]
    rows = list(csv.reader(open(paths[0])))
    assert rows[0][:4] == ["intensity", "ctype", "nll", "cutoff_0"] and rows[0][-1] == "ece_signed"
    assert rows[1][:2] == ["1", "fog"] and rows[2][:2] == ["2", "fog"] and len(rows) == 3
    assert rb.from_json(json.loads(paths[2].read_text())) == results


def test_imagenet_c_layout_is_evaluated_like_a_c_folder(tmp_path):
    from PIL import Image

    # {root}/{corruption}/{severity}/{wnid}/*.JPEG with 8x8 images: class n01 dark, n02 bright, except that
    # severity 2 of fog brightens the first two dark images (two errors out of six).
    for c in ("fog", "contrast"):
        for s in (1, 2):
            for k, wnid in enumerate(("n01", "n02")):
                (tmp_path / c / str(s) / wnid).mkdir(parents=True)
                for i in range(3):
                    level = 40 if k == 0 else 220
                    if (c, s, k) == ("fog", 2, 0) and i < 2:
                        level = 200
                    Image.new("RGB", (8, 8), (level,) * 3).save(tmp_path / c / str(s) / wnid / f"{i}.JPEG")
    cset = csets.ImageNetCSet(tmp_path, crop=8)
    assert cset.corruptions == ["fog", "contrast"] and cset.severities == (1, 2)
    results = rb.evaluate_corrupted(MeanBrightness(k=2), cset, mean=(0.0,) * 3, std=(1.0,) * 3, batch_size=4,
                                    workers=0, progress=False)
    assert rb.errors(results, 1) == {"fog": {1: 0.0, 2: pytest.approx(2 / 6)}, "contrast": {1: 0.0, 2: 0.0}}
    # n images: the same fixed random ones in every cell (an ImageFolder is sorted by class)
    a, b = cset.dataset("fog", 1, (0.0,) * 3, (1.0,) * 3, n=4), cset.dataset("contrast", 2, (0.0,) * 3, (1.0,) * 3, n=4)
    assert a.indices == b.indices and len(set(a.dataset.targets[i] for i in a.indices)) == 2
    with pytest.raises(oc.CorruptedDataNotFoundError, match="no corruption folder"):
        csets.ImageNetCSet(tmp_path / "fog")
