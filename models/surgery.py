"""Model surgery: add spatial smoothing or MC dropout to any trained CNN without touching its weights.

    model, inserted = models.add_smoothing(torchvision.models.resnet18())          # before each subsampling
    model, inserted = models.add_smoothing(model, where=["layer1", "layer2"])      # after named modules
    model, inserted = models.add_mc_dropout(model, rate=0.3)                        # zoo placement
    for point in inserted: print(point)   # after layer1 (64 ch, 16x16): feeds layer2.0.conv1, layer2.0.downsample.0
    models.plan_smoothing(model)          # where add_smoothing would insert, without inserting

Smoothing blocks and MC dropout have no parameters, so a model keeps its `state_dict` (same keys, same tensors)
and pretrained checkpoints load into it with `strict=True` before or after the surgery. (A block with
parameters, e.g. `block="bn"`, adds its own keys and nothing else.) The model is changed in place and returned.

**Where smoothing goes** (`where="subsampling"`). The paper puts a smoothing block before each subsampling
stage, i.e. on the feature map that the next stage reads. Found from the module graph:

1. `torch.fx` traces the forward into a graph; one forward pass of `example_input` (1x3x64x64 by default)
   records every tensor's shape. A *subsampling* is a strided convolution or a pooling (module or functional,
   or a global mean / max in a head) whose output has fewer positions than its (B, C, H, W) input.
2. Subsamplings that read the same resolution form one transition (a ResNet's strided conv and its strided
   projection shortcut). The block goes on the nearest tensor through which every path to all of them passes
   (their common dominator), moved back over per-position layers (BatchNorm, activations, dropout, identities)
   to the outermost module boundary: the output of `layer1`, not the ReLU inside the next block (that is what
   makes pre-activation ResNets smooth the stage output, before the next block's BN-ReLU).
3. Not smoothed: the input image; the stem (with `stem=False`, the default: transitions that come before the
   first stride-1 spatial convolution, e.g. the max-pool of a ResNet's ImageNet stem); the head's pooling when
   `head=False` (the head: transitions after the last convolution of a map larger than 1x1; only the first of
   them counts, later pools in a head only resize, like VGG's adaptive pool). "Before each subsampling" thus
   means, for a classifier with a GAP head, after every stage including the last, which is what our ResNet,
   ResNeXt, Wide ResNet and VGG `_smoothing` models do. Our pre-activation ResNets do not smooth before their
   BN-GAP head (`head=False` reproduces them) and our AlexNet smooths its stem's output too (`stem=True`).

**How a block is inserted.** On the module whose output is that tensor: a plain `nn.Sequential` gets the
block appended (`layer1.2`); any other module keeps it as a child `<module>.smoothing` applied by a forward
hook (when the tensor is a module's input, not an output, by a forward pre-hook). The model keeps its class,
methods and attribute names; `print(model)` shows the blocks; deepcopy and pickling work. A final forward pass
checks that every block ran exactly once.

Limits: the host module must be called once per forward (a shared `nn.ReLU` is never chosen); a point that is
not a module boundary (a functional op in the middle of a custom `forward`) raises and asks for `where=[...]`
names; networks with several resolutions in parallel (HRNet) are not analysed per branch; forward hooks are
not exported by TorchScript. Python control flow on flags and sizes traces fine; a module whose forward fx
cannot trace (control flow on tensor values) becomes a black box: if it subsamples, it counts as one
subsampling and nothing goes inside it (a forward that cannot be traced at the top level raises and asks for
names). Hooks registered on a non-Sequential host before the surgery see its output before smoothing, hooks
registered after see it after.

The tanh block ends with a ReLU, a no-op on the post-ReLU stage outputs of ResNet and VGG; on networks whose
stage outputs are signed (ConvNeXt's residual stream) it removes the negative half: use `block="blur"` there.

**Where MC dropout goes** (`add_mc_dropout`, `where="auto"`): in a residual network, on the input of the last
convolution (or linear layer) of each residual branch, i.e. after the activation that precedes it, which is
where our `mcdo` ResNets have it; in a network without residual blocks, after each convolution's
BatchNorm/activation (our `mcdo` VGG and AlexNet). `where="dropout"` turns the model's own `nn.Dropout`
layers into MC dropout instead; a list of names puts it after those modules.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .layers import MCDropout, evaluating
from .smoothing import SmoothingBlock, make_smoothing

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["add_smoothing", "add_mc_dropout", "plan_smoothing", "Insertion"]


@dataclass(frozen=True)
class Insertion:
    """One inserted block: on the output (`after`) or the input (`before`) of `module`."""
    module: str            # qualified name of the host module
    position: str          # "after" | "before" | "replaced" (an nn.Dropout turned into MC dropout)
    block: str             # qualified name of the inserted block ("" in a plan)
    channels: int
    size: tuple            # (H, W) of the map it receives, for the example input
    reason: str            # what it precedes

    def __str__(self):
        if self.position == "replaced":  # add_mc_dropout(where="dropout")
            return f"replaced {self.module}: {self.reason}"
        return f"{self.position} {self.module} ({self.channels} ch, {self.size[0]}x{self.size[1]}): {self.reason}"


# --- what counts as what in a traced graph ----------------------------------------------------------------

_POOL_MODULES = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd,
                 nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_SPATIAL_FUNCTIONS = {F.conv2d, torch.conv2d, F.max_pool2d, torch.max_pool2d, F.avg_pool2d, F.lp_pool2d,
                      F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_REDUCE_FUNCTIONS = {torch.mean, torch.amax, torch.sum}
_REDUCE_METHODS = {"mean", "amax", "sum", "max"}
# Layers that act on each position separately: a smoothing point may move across them.
_POINTWISE_MODULES = (nn.Identity, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.ReLU,
                      nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, MCDropout)
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
                        F.leaky_relu, F.elu, torch.sigmoid, torch.tanh, F.dropout, F.dropout2d, F.batch_norm,
                        torch.clamp, operator.mul, operator.truediv, torch.mul, F.layer_norm}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "permute", "contiguous", "mul", "div", "clamp", "float", "to",
                      "clone"}
_ADDS = {operator.add, operator.iadd, torch.add}


class _Tracer(fx.Tracer):
    """fx tracer that treats `leaves` (module names) as black boxes and remembers where tracing failed."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves, self.failed_in = leaves, None

    def is_leaf_module(self, m, qualname):
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module whose forward failed
                self.failed_in = self.path_of_module(m)
            raise


class _Graph:
    """A traced model with shapes, module scopes, reachability from the input and immediate dominators."""

    def __init__(self, model, example_input):
        self.model = model
        leaves = set()
        for _ in range(64):
            tracer = _Tracer(leaves)
            try:
                graph = tracer.trace(model, concrete_args=_concrete_args(model))
                break
            except Exception as err:
                if tracer.failed_in is None or tracer.failed_in in leaves:
                    raise ValueError(f"torch.fx cannot trace {type(model).__name__}.forward ({type(err).__name__}: "
                                     f"{err}); name the modules to smooth after with where=[...]") from err
                leaves.add(tracer.failed_in)
        self.leaves = leaves
        self.gm = fx.GraphModule(model, graph)
        with _quiet_forward(model):
            ShapeProp(self.gm).propagate(example_input)
        self.nodes = list(self.gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.stack = {n: list(n.meta.get("nn_module_stack", {})) for n in self.nodes}
        self.multi = {k.split("@")[0] for s in self.stack.values() for k in s if "@" in k}  # called more than once
        names = dict(model.named_modules())
        unknown = {k.split("@")[0] for s in self.stack.values() for k in s} - set(names)
        if unknown:  # the module scopes are how boundaries are found: refuse rather than guess
            raise RuntimeError(f"torch.fx recorded module scopes that are not module names ({sorted(unknown)[:3]}); "
                               f"this torch version is not supported by models.surgery: pass where=[...] names")
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        self.input = inputs[0]
        self.reach = {self.input}
        for n in self.nodes:
            if any(a in self.reach for a in n.all_input_nodes):
                self.reach.add(n)
        self.idom = {self.input: self.input}
        for n in self.nodes:
            if n in self.reach and n is not self.input:
                preds = self.preds(n)
                d = preds[0]
                for p in preds[1:]:
                    d = self.intersect(d, p)
                self.idom[n] = d

    def preds(self, n):
        return [a for a in n.all_input_nodes if a in self.reach]

    def users(self, n):
        return [u for u in n.users if u in self.reach and self.shape(u) is not None]

    def intersect(self, a, b):
        """Nearest common dominator of a and b (a node dominates itself)."""
        while a is not b:
            while self.index[a] > self.index[b]:
                a = self.idom[a]
            while self.index[b] > self.index[a]:
                b = self.idom[b]
        return a

    def shape(self, n):
        meta = n.meta.get("tensor_meta")
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    def module(self, n):
        return self.gm.get_submodule(n.target) if n.op == "call_module" else None

    def data_input(self, n):
        """The single input of `n` that comes from the model input, else None."""
        preds = self.preds(n)
        return preds[0] if len(preds) == 1 else None

    def is_pointwise(self, n):
        if self.data_input(n) is None:
            return False
        if n.op == "call_module":
            return isinstance(self.module(n), _POINTWISE_MODULES)
        if n.op == "call_function":
            if n.target is F.layer_norm:  # over channels only (channels-last): per position
                shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
                return len(shape) == 1
            return n.target in _POINTWISE_FUNCTIONS
        return n.op == "call_method" and n.target in _POINTWISE_METHODS

    def is_conv(self, n, linear=False):
        m = self.module(n)
        if m is not None:
            return isinstance(m, nn.Conv2d) or (linear and isinstance(m, nn.Linear))
        return n.op == "call_function" and (n.target in (F.conv2d, torch.conv2d) or (linear and n.target is F.linear))

    def subsampling(self, n):
        """(input node, (H, W)) if `n` subsamples a (B, C, H, W) map, else None."""
        m = self.module(n)
        if n.op == "call_module" and n.target in self.leaves:  # black box: judged by shapes alone
            src = next((a for a in self.preds(n) if self.shape(a) and len(self.shape(a)) == 4), None)
            spatial = True
        else:
            src = self.data_input(n)
            spatial = (isinstance(m, (nn.Conv2d,) + _POOL_MODULES) if m is not None
                       else n.op == "call_function" and n.target in _SPATIAL_FUNCTIONS)
        reduce = (n.op == "call_function" and n.target in _REDUCE_FUNCTIONS) or (
            n.op == "call_method" and n.target in _REDUCE_METHODS)
        x, y = (self.shape(src) if src is not None else None), self.shape(n)
        if x is None or y is None or len(x) != 4:
            return None
        if spatial and len(y) == 4 and y[0] == x[0] and y[2] * y[3] < x[2] * x[3]:
            return src, x[2:]
        if reduce and y in (x[:2], x[:2] + (1, 1)) and x[2] * x[3] > 1:
            return src, x[2:]
        return None

    def host(self, c, k):
        """(module name, position) of a module boundary at depth k that holds tensor `c`, else None."""
        stack = self.stack[c]
        if len(stack) > k:  # c leaves the module stack[k]: smooth its output
            key = stack[k]
            if "@" not in key and key not in self.multi:
                return key, "after"
            return None
        entered = {self.stack[u][k] if len(self.stack[u]) > k else None for u in self.users(c)}
        if len(entered) == 1 and None not in entered:  # c only enters one module: smooth its input
            key = entered.pop()
            if "@" not in key and key not in self.multi:
                return key, "before"
        return None

    def depth(self, c):
        """How deep in the module tree the boundary after `c` lies (0: between top-level modules)."""
        k = len(self.stack[c])
        for u in self.users(c):
            s = self.stack[u]
            common = next((i for i, (a, b) in enumerate(zip(self.stack[c], s)) if a != b), min(len(s), k))
            k = min(k, common)
        return k


def _concrete_args(model):
    """Keyword arguments of forward (beyond the input) fixed to their defaults, so that fx can branch on them."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD} or None


@contextlib.contextmanager
def _quiet_forward(model):
    """evaluating(model) and a forked RNG around analysis passes: no BatchNorm update, no change to random draws."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), evaluating(model):
        yield


def _example(model, example_input):
    """The given input, or a fixed random 1x3x64x64 batch on the model's device (own generator: the global
    random stream is left alone)."""
    if example_input is not None:
        return example_input
    p = next(iter(list(model.parameters()) + list(model.buffers())), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    return torch.randn(1, 3, 64, 64, generator=generator, device=device, dtype=dtype)


def _label(g, n):
    """A readable name for a graph node: the module, or the enclosing module and the operation."""
    if n.op == "call_module":
        return n.target
    scope = g.stack[n][-1].split("@")[0] if g.stack[n] else ""
    op = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.name)
    return f"{scope} ({op})" if scope else op


def _names(nodes, g):
    return list(dict.fromkeys(_label(g, n) for n in nodes))


# --- smoothing -------------------------------------------------------------------------------------------------

def plan_smoothing(model: nn.Module, stem: bool = False, head: bool = True, example_input: torch.Tensor = None) -> list:
    """Where `add_smoothing(where="subsampling")` would put blocks, without changing `model`: [Insertion]."""
    example_input = _example(model, example_input)
    g = _Graph(model, example_input)
    groups = {}  # (H, W) -> [subsampling nodes]
    readers = {}
    for n in g.nodes:
        if n in g.reach:
            found = g.subsampling(n)
            if found is not None:
                groups.setdefault(found[1], []).append(n)
                readers.setdefault(found[1], []).append(found[0])
    # Stem: transitions before the first stride-1 spatial convolution. Head: transitions after the last
    # convolution of a map larger than 1x1; only the first of them (a head's later pools resize, not subsample).
    convs = [n for n in g.nodes if n in g.reach and g.is_conv(n) and g.data_input(n) is not None]
    body = [n for n in convs if g.shape(n)[2:] == g.shape(g.data_input(n))[2:] and _kernel(g, n) > 1]
    first_body = g.index[body[0]] if body else -1
    spatial = [n for n in convs if _positions(g.shape(g.data_input(n))) > 1]
    last_conv = g.index[spatial[-1]] if spatial else len(g.nodes)
    in_head = [size for size, members in groups.items() if min(g.index[n] for n in members) > last_conv]
    first_head = min(in_head, key=lambda size: min(g.index[n] for n in groups[size]), default=None)

    plan = []
    for size, members in groups.items():
        if not stem and max(g.index[n] for n in members) < first_body:
            continue
        if size in in_head and (not head or size != first_head):
            continue
        d = readers[size][0]
        for other in readers[size][1:]:
            d = g.intersect(d, other)
        chain = [d]  # d, then back over per-position layers
        while g.is_pointwise(chain[-1]) and g.data_input(chain[-1]) is not g.input:
            chain.append(g.data_input(chain[-1]))
        if d is g.input:
            continue  # the transition reads the image itself
        # The outermost module boundary wins (a stage output over a ReLU inside the next block); among equals the
        # one nearest the subsampling.
        candidates = [c for c in chain if g.shape(c) and len(g.shape(c)) == 4 and g.shape(c)[2:] == size]
        hosts = [(c, g.host(c, g.depth(c))) for c in sorted(candidates, key=lambda c: (g.depth(c), chain.index(c)))]
        c, host = next(((c, h) for c, h in hosts if h is not None), (None, None))
        reason = "feeds " + ", ".join(_names(members, g))
        if host is None:
            raise ValueError(f"The {size[0]}x{size[1]} map that {reason} is not the input or output of a module "
                             f"called once per forward, so no block can be attached to it; pass the modules to "
                             f"smooth after as where=[...]")
        plan.append((g.index[c], Insertion(host[0], host[1], "", g.shape(c)[1], tuple(size), reason)))
    return [point for _, point in sorted(plan, key=lambda item: item[0])]


def _positions(shape):
    return shape[2] * shape[3] if shape is not None and len(shape) == 4 else 0


def _kernel(g, n):
    m = g.module(n)
    if m is not None:
        return max(m.kernel_size)
    w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
    shape = g.shape(w) if isinstance(w, fx.Node) else None
    return max(shape[2:]) if shape else 3


def add_smoothing(model: nn.Module, block: str | Callable[..., nn.Module] = "tanh", where: str = "subsampling", *,
                  stem: bool = False, head: bool = True, example_input: torch.Tensor = None,
                  **block_kwargs: Any) -> tuple:
    """Insert smoothing blocks into `model` (in place); returns (model, [Insertion]).

    block: a name of models.SMOOTHING_BLOCKS ("tanh": the paper's), a class or a callable `in_filters ->
    module`; block_kwargs (temp, sfilter, pad_mode, thr) go to it. where: "subsampling" (before each spatial
    subsampling, see the module docstring; `stem` and `head` widen or narrow it) or a list of module names
    (after each). example_input: a batch the model accepts (default: random 1x3x64x64 on its device), used to
    trace shapes; the placement does not depend on its values.
    """
    factory = make_smoothing(block, **block_kwargs)
    if isinstance(where, str) and where != "subsampling":
        raise ValueError(f"where={where!r}: use 'subsampling' or a list of module names, e.g. "
                         f"where=['layer1', 'layer2']")
    present = next((n for n, m in model.named_modules() if isinstance(m, SmoothingBlock)), None)
    if isinstance(where, str) and present is not None:
        raise ValueError(f"{type(model).__name__} already smooths ({present}); where='subsampling' would smooth "
                         f"twice. Start from the model without smoothing, or name extra points with where=[...]")

    def plan(x):
        return plan_smoothing(model, stem=stem, head=head, example_input=x)

    return _insert(model, factory, "smoothing", plan if isinstance(where, str) else where, example_input)


# --- MC dropout ------------------------------------------------------------------------------------------------

def add_mc_dropout(model: nn.Module, rate: float, where: str = "auto", *, example_input: torch.Tensor = None) -> tuple:
    """Insert MC dropout (models.MCDropout: stays on in eval()) into `model` (in place); returns (model, [Insertion]).

    where: "auto" (residual networks: on the input of the last convolution of each residual branch; others:
    after each convolution's BatchNorm/activation), "residual", "conv", "dropout" (turn the model's nn.Dropout
    layers into MCDropout of this rate) or a list of module names (after each).
    """
    MCDropout(rate)  # validates the rate
    if where == "dropout":
        return _replace_dropout(model, rate)
    if isinstance(where, str) and where not in ("auto", "residual", "conv"):
        raise ValueError(f"where={where!r}: use 'auto', 'residual', 'conv', 'dropout' or a list of module names")
    present = next((n for n, m in model.named_modules() if isinstance(m, MCDropout)), None)
    if isinstance(where, str) and present is not None:
        raise ValueError(f"{type(model).__name__} already has MC dropout ({present}); where={where!r} would add a "
                         f"second one. Start from the deterministic model, or name extra points with where=[...]")

    def plan(x):
        return _plan_dropout(model, x, where)

    return _insert(model, lambda channels: MCDropout(rate), "mc_dropout", plan if isinstance(where, str) else where,
                   example_input)


def _is_add(n):
    return (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))


def _plan_dropout(model, example_input, mode):
    g = _Graph(model, example_input)
    adds = [n for n in g.nodes if n in g.reach and _is_add(n) and len(g.preds(n)) == 2 and g.shape(n)
            and len(g.shape(n)) == 4 and g.shape(g.preds(n)[0]) == g.shape(g.preds(n)[1])]
    if mode == "auto":
        mode = "residual" if adds else "conv"
    plan = []
    if mode == "residual":
        if not adds:
            raise ValueError(f"{type(model).__name__} has no residual additions; use where='conv' or a list of names")
        for a in adds:
            d = g.idom[a]
            for x in g.preds(a):
                while g.is_pointwise(x) and x is not d:  # back over BN, activations, layer scale, permutes
                    x = g.data_input(x)
                if x is d or not g.is_conv(x, linear=True):
                    continue  # identity shortcut (or a branch we do not understand)
                src = g.data_input(x)
                base = src
                while base is not None and base is not d and g.is_pointwise(base):
                    base = g.data_input(base)
                if base is d or x.op != "call_module":
                    continue  # projection shortcut (a single convolution of the block input), or functional
                if x.target in g.multi:
                    raise ValueError(f"{x.target} is called more than once per forward, so MC dropout cannot "
                                     f"precede it alone; pass where=[...] names")
                shape = g.shape(src)
                plan.append(Insertion(x.target, "before", "", shape[1] if len(shape) == 4 else shape[-1],
                                      tuple(shape[2:]) if len(shape) == 4 else tuple(shape[1:3]),
                                      f"last {'convolution' if g.is_conv(x) else 'linear layer'} of the residual "
                                      f"branch ending at {_names([a], g)[0]}"))
        return plan
    for n in g.nodes:  # "conv": after each convolution and the per-position layers that follow it in its module
        if n not in g.reach or not g.is_conv(n) or n.op != "call_module":
            continue
        parent, cur = g.stack[n][:-1], n
        while True:
            nxt = g.users(cur)
            if (len(nxt) != 1 or not g.is_pointwise(nxt[0]) or nxt[0].op != "call_module"
                    or g.stack[nxt[0]][:len(parent)] != parent):
                break
            cur = nxt[0]
        if "@" in g.stack[cur][-1] or cur.target in g.multi:
            raise ValueError(f"{cur.target} is called more than once per forward, so MC dropout cannot follow "
                             f"{n.target} alone; pass where=[...] names")
        shape = g.shape(cur)
        plan.append(Insertion(cur.target, "after", "", shape[1], tuple(shape[2:]), f"after convolution {n.target}"))
    return plan


def _replace_dropout(model, rate):
    inserted = []
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.dropout._DropoutNd) and not isinstance(m, MCDropout):
            parent, _, attr = name.rpartition(".")
            new = MCDropout(rate)
            new._surgery = "mc_dropout"
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            inserted.append(Insertion(name, "replaced", name, 0, (), f"was {m!r}"))
    if not inserted:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout layers to turn into MC dropout; use "
                         f"where='auto' to insert MC dropout")
    return model, inserted


# --- inserting blocks ----------------------------------------------------------------------------------------------

class _ApplyAfter:
    """Forward hook: the host's output goes through its child `attr`. A class, so that models stay picklable."""

    def __init__(self, attr):
        self.attr = attr

    def __call__(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{type(module).__name__} returns {type(output).__name__}, not a tensor: cannot apply "
                            f"{self.attr} to it")
        return getattr(module, self.attr)(output)


class _ApplyBefore:
    """Forward pre-hook: the host's first input goes through its child `attr`."""

    def __init__(self, attr):
        self.attr = attr

    def __call__(self, module, args):
        return (getattr(module, self.attr)(args[0]),) + tuple(args[1:])


def _is_plain_sequential(m):
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _explicit_plan(model, names, example_input):
    modules = dict(model.named_modules())
    plan = []
    for name in names:
        if name not in modules or name == "":
            close = difflib.get_close_matches(str(name), [n for n in modules if n], n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else " See dict(model.named_modules())."
            raise ValueError(f"where=[...]: {type(model).__name__} has no module {name!r}.{hint}")
    outputs = _outputs_of(model, names, example_input)
    for name in names:
        outs = outputs[name]
        if len(outs) != 1 or not isinstance(outs[0], torch.Tensor) or outs[0].ndim != 4:
            what = (f"is called {len(outs)} times per forward" if len(outs) != 1 else
                    f"returns {type(outs[0]).__name__} {tuple(getattr(outs[0], 'shape', ()))}")
            raise ValueError(f"where=[...]: {name} {what}; a block needs a module called once that returns a "
                             f"(B, C, H, W) tensor")
        plan.append(Insertion(name, "after", "", outs[0].shape[1], tuple(outs[0].shape[2:]), "named in where="))
    return plan


def _insert(model, factory, attr, plan, example_input):
    """Insert `factory(channels)` at each point of `plan` (a function of the example input, or module names)."""
    if not callable(plan) and (not isinstance(plan, (list, tuple)) or not all(isinstance(n, str) for n in plan)):
        raise TypeError(f"where must be a placement name or a list of module names, got {plan!r}")
    example_input = _example(model, example_input)
    plan = plan(example_input) if callable(plan) else _explicit_plan(model, list(plan), example_input)
    p = next(iter(list(model.parameters()) + list(model.buffers())), None)
    inserted, undo = [], []
    try:
        for point in plan:
            host_name, position = point.module, point.position
            host = model.get_submodule(host_name)
            while position == "before" and _is_plain_sequential(host) and len(host):
                host_name, host = f"{host_name}.0", host[0]  # a Sequential's input is its first module's input
            new = factory(point.channels)
            new._surgery = attr
            if p is not None:
                new.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
            new.train(model.training)
            if position == "after" and _is_plain_sequential(host):
                if len(host) and getattr(host[-1], "_surgery", None) == attr:
                    raise ValueError(f"{host_name} already ends with {attr} inserted by models.surgery")
                host.append(new)
                block_name = f"{host_name}.{len(host) - 1}"
                undo.append(lambda host=host: host.__delitem__(-1))
            else:
                if attr in host._modules or hasattr(host, attr):
                    raise ValueError(f"{host_name} already has an attribute {attr!r} (inserted before?)")
                host.add_module(attr, new)
                hook = (host.register_forward_hook(_ApplyAfter(attr)) if position == "after"
                        else host.register_forward_pre_hook(_ApplyBefore(attr)))
                block_name = f"{host_name}.{attr}" if host_name else attr
                undo.append(lambda host=host, hook=hook: (hook.remove(), host._modules.pop(attr)))
            inserted.append(Insertion(host_name, position, block_name, point.channels, point.size, point.reason))
        _check_each_runs_once(model, inserted, example_input)
    except Exception:
        for fn in reversed(undo):
            fn()
        raise
    return model, inserted


def _outputs_of(model, names, example_input):
    """{name: [every output of that module in one quiet forward pass of example_input]}."""
    outputs = {name: [] for name in names}
    handles = [model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out))
               for name in names]
    try:
        with _quiet_forward(model):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _check_each_runs_once(model, inserted, example_input):
    outputs = _outputs_of(model, [p.block for p in inserted], example_input)
    wrong = {name: len(outs) for name, outs in outputs.items() if len(outs) != 1}
    if wrong:
        raise RuntimeError(f"inserted blocks ran {wrong} times in one forward pass instead of once: the host "
                           f"modules are not called the way the graph suggested; pass where=[...] names")
