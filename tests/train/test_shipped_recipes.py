"""The exported reference networks stay the set's networks: their cards store the validation passes under
`val.n_ff` (the original implementation's key, kept as the config key when `ops.evaluate.test` gained the clearer
`mc_samples`), and `ops.train.sets.is_finished` compares each card with the set config as the same recipe."""
import json
from pathlib import Path

import pytest

from ops.common import runtime
from ops.train import configs, pretrained, sets
from tests.helpers import shipped_reference_networks

ROOT = Path(__file__).resolve().parents[2]
FASHION = ROOT / "configs" / "fashion_mnist_reference.json"
SHIPPED = ROOT / "resources" / "models_checkpoints"


_shipped = shipped_reference_networks


def test_the_validation_passes_keep_the_original_config_key():
    assert configs.make_config()["val"]["n_ff"] == 1
    assert configs.make_config(overrides=["val.n_ff=3"])["val"]["n_ff"] == 3
    for n in sets.load_set(FASHION)[1]:
        assert n.cfg["val"]["n_ff"] == 1


def test_every_shipped_network_is_a_finished_network_of_the_set(monkeypatch):
    shipped = _shipped()
    assert len(shipped) >= 15
    for n, path in shipped:
        card = pretrained.read_card(path)
        assert card["config"]["val"] == {**card["config"]["val"], "n_ff": 1}
        # precision "auto" resolves on the machine that runs the test: take the card's (what the network trained in)
        monkeypatch.setattr(runtime, "resolve_precision",
                            lambda precision, device, p=card["config"]["env"]["precision"]: (p, "as trained"))
        assert sets.is_finished(n, SHIPPED), path.name


def test_validation_passes_are_not_part_of_the_recipe_but_the_comparison_is_live(tmp_path, monkeypatch):
    """A card whose val.n_ff differs is still the set's network (validation does not change the weights); one
    whose env.seed differs is refused: the cards really are compared key by key."""
    n, path = _shipped()[0]
    monkeypatch.setattr(runtime, "resolve_precision",
                        lambda precision, device, p=pretrained.read_card(path)["config"]["env"]["precision"]:
                        (p, "as trained"))
    exported = sets.exported_path(n, tmp_path)
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"")
    card = pretrained.read_card(path)
    card["config"]["val"]["n_ff"] = 5
    pretrained.card_path(exported).write_text(json.dumps(card))
    assert not configs.affects_result("val.n_ff") and sets.is_finished(n, tmp_path)
    card["config"]["env"]["seed"] += 1
    pretrained.card_path(exported).write_text(json.dumps(card))
    with pytest.raises(sets.SetError, match="env.seed"):
        sets.is_finished(n, tmp_path)
