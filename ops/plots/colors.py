"""One colour per model across every figure of the library: a model keeps its colour from figure to figure.

    color = model_color("resnet_mcdo_smoothing_18")     # or a label such as "MC dropout + smoothing"

The colour follows what the model is (deterministic or MC dropout, with or without smoothing, MLP head, deep
ensemble), read from its name or label; anything else gets a stable colour from its name.
"""
import zlib

# Okabe-Ito colours (readable for colour-blind readers), by kind of model.
KIND_COLORS = {
    "mcdo": "#0072B2",            # MC dropout: blue
    "mcdo_smoothing": "#D55E00",  # MC dropout + smoothing: vermillion
    "dnn": "#009E73",             # deterministic: green
    "dnn_smoothing": "#CC79A7",   # deterministic + smoothing: purple
    "mcdo_mlp": "#56B4E9",        # MC dropout, MLP head: sky blue
    "ensemble": "#000000",        # deep ensembles: black
    "ensemble_smoothing": "#882255",  # deep ensembles of smoothing networks: wine
    "posthoc_smoothing": "#E69F00",   # smoothing added to a trained network without retraining: orange
}
_OTHERS = ["#F0E442", "#999999", "#882255", "#44AA99", "#117733", "#332288"]


def model_kind(label: str):
    """The KIND_COLORS key of a model name or label, or None."""
    text = str(label).lower().replace("-", "_").replace(" ", "_")
    smooth = "smooth" in text
    if smooth and ("added" in text or "posthoc" in text or "post_hoc" in text):
        return "posthoc_smoothing"
    if "ensemble" in text:
        return "ensemble_smoothing" if smooth else "ensemble"
    if "mlp" in text:
        return "mcdo_mlp"
    if "dnn" in text or "determin" in text:
        return "dnn_smoothing" if smooth else "dnn"
    if "mcdo" in text or "mc_dropout" in text or "dropout" in text or smooth:
        return "mcdo_smoothing" if smooth else "mcdo"
    return None


def model_color(label: str) -> str:
    kind = model_kind(label)
    if kind is not None:
        return KIND_COLORS[kind]
    return _OTHERS[zlib.crc32(str(label).encode()) % len(_OTHERS)]
