"""Any PyTorch classifier as a model the diagnostics accept (`AdaptedNet`, built by `adapt_classifier`).

A model logged by someone else has its own module names and its own forward; nothing here assumes a
registry shape. From one probe forward pass with hooks:

* the **analysis layers** are its ``nn.Conv2d`` and ``nn.Linear`` modules in forward-execution order,
  under their module paths (``layer1.0.conv1``); a module called more than once per pass (a shared
  layer) has no single output to attribute and is left out, with a note;
* the **embedding** is the input of the last ``nn.Linear`` called (the paper's "activation right
  before the fully connected layers" for a one-layer head), or the output of the module named by
  ``embedding_layer``; it is captured by a hook in the same pass that gives the logits, because a
  foreign model's logits need not be ``head(embedding)``.

Which consecutive pairs are a **plain chain** (weight extraction's formulas hold: layer i+1's input is
a function of layer i's output alone, through channel-preserving ops) is read from the model's
``torch.export`` graph (`models.graph.chain_pairs`; the conv layers' receptive fields too):
walking back from layer i+1's input, every op met must take one activation (batch norm, activations, pooling, dropout, flatten/reshape) until layer i's op is reached.
An op joining two activations (a residual ``add``, ``cat``, attention's ``matmul``) or another op makes
the pair not plain; the reason is kept in ``pair_notes`` and goes to the manifest's notes.

A model loaded from MLflow's ``pt2`` format is an unflattened exported program whose leaves are
interpreter modules; `materialise_layers` turns each conv/linear leaf back into a real ``nn.Conv2d`` /
``nn.Linear`` holding the same tensors, so that hooks, shapes and the diagnostics' formulas see the
usual modules.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from ..errors import ModelError
from .graph import LAYER_OPS, chain_pairs, op_name, receptive_fields

ANALYSED = (nn.Conv2d, nn.Linear)



class AdaptedNet(nn.Module):
    """A foreign classifier wrapped for the diagnostics (see the module docstring).

    Attributes:
        net: the wrapped module (its state-dict keys carry the prefix ``net.``).
        arch: a label for messages and the manifest (``pytorch:<class name>``).
        analysis_layers: ordered module path → ``nn.Conv2d``/``nn.Linear``, forward-execution order.
        embedding_layer: the module path whose input (default: the last Linear) or output
            (``embedding_layer`` given) is the embedding; ``embedding_kind`` says which.
        plain_pairs: consecutive analysis-layer pairs that form a plain chain (weight records).
        pair_notes: (layer, next layer) → why that pair gets no weight records.
        notes: what else the adapter decided (layers left out, a graph it could not read).
        num_outputs: the logits' width.
    """

    def __init__(self, net: nn.Module, *, arch: str, layers: list[tuple[str, nn.Module]],
                 embedding: tuple[str, str], plain_pairs, pair_notes: dict, notes: list[str],
                 num_outputs: int, normalisation=None):
        super().__init__()
        self.net = net
        mean, std = normalisation or ((0.0,), (1.0,))
        # (x − mean) / std in front of net, not saved: the logged model stays the user's own
        self.register_buffer("input_mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)
        self.arch = arch
        object.__setattr__(self, "_layers", OrderedDict(layers))  # already submodules of net
        self.embedding_layer, self.embedding_kind = embedding
        self.plain_pairs = frozenset(plain_pairs)
        self.pair_notes = dict(pair_notes)
        self.notes = list(notes)
        self.num_outputs = int(num_outputs)
        self.receptive_fields: dict[str, tuple[int, int, int] | None] = {}  # set by adapt_classifier

    @property
    def analysis_layers(self) -> "OrderedDict[str, nn.Module]":
        return self._layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.input_mean) / self.input_std)

    def diagnosis_notes(self, layer_names) -> list[str]:
        """For the manifest: layers left out, and the analysed consecutive pairs (of ``layer_names``)
        that get no weight records because the graph is not a plain chain there."""
        notes = [f"model: {n}" for n in self.notes]
        for pair in zip(layer_names, layer_names[1:]):
            if pair not in self.plain_pairs:
                why = self.pair_notes.get(pair, "the two layers are not consecutive in the model")
                notes.append(f"no weight records for {pair[0]} → {pair[1]}: {why}")
        return notes

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (N, D), logits (N, classes)) from one forward pass."""
        module = self.net.get_submodule(self.embedding_layer)
        grabbed = []
        if self.embedding_kind == "input":
            handle = module.register_forward_pre_hook(lambda m, args: grabbed.append(args[0]))
        else:
            handle = module.register_forward_hook(lambda m, args, out: grabbed.append(out))
        try:
            logits = self(x)
        finally:
            handle.remove()
        return grabbed[-1].flatten(1), logits


class _Exportable(nn.Module):
    """``net`` with a one-tensor ``forward(x)`` for ``torch.export`` (an unflattened program takes
    ``*args``), holding its children, parameters and buffers under their own names."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._modules.update(net._modules)
        self._parameters.update(net._parameters)
        self._buffers.update(net._buffers)
        object.__setattr__(self, "impl", net)  # not a submodule: its children are already ours

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x)


def exportable(model: nn.Module) -> nn.Module:
    """What to log for ``model``: an adapted model's own network, as ``torch.export`` (MLflow's pt2
    format) takes it, so that the logged model keeps the original module names; others unchanged."""
    if not isinstance(model, AdaptedNet):
        return model
    # named after the original class: the exported graph records it, and the next load reads it back
    name = re.sub(r"\W", "_", model.arch.partition(":")[2]) or "Exportable"
    return type(name, (_Exportable,), {"__module__": __name__})(model.net)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def adapt_classifier(net: nn.Module, example: torch.Tensor, *, embedding_layer: str | None = None,
                     exported=None, what: str = "the model", normalisation=None) -> AdaptedNet:
    """``net`` (any classifier of images (N, C, H, W) → logits (N, classes)) as an `AdaptedNet`.

    Args:
        example: a float batch of at least 2 inputs of the size the model takes.
        embedding_layer: module path whose output is the embedding; None: the last Linear's input.
        exported: the model's ``torch.export.ExportedProgram`` if already known (a pt2 model);
            otherwise ``net`` is exported here to read its graph (on failure no pair is plain, noted).
        what: names the model in messages (e.g. its URI).
        normalisation: (mean, std) per channel (or one value) the model expects its inputs normalised
            with; the adapted model takes images in [0, 1] and applies it in front of ``net``.

    Raises:
        ModelError: the model fails on ``example``, does not return (N, classes) logits, has no
            Conv2d/Linear layer, or ``embedding_layer`` is not one of its modules.
    """
    net.eval()
    if normalisation is not None:  # the probe sees what the model will see
        mean, std = (torch.tensor(v, dtype=example.dtype).reshape(1, -1, 1, 1) for v in normalisation)
        example = (example - mean) / std
    order, logits, calls = _probe(net, example, what)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(example):
        got = getattr(logits, "shape", type(logits).__name__)
        raise ModelError(f"Expected {what} to be a classifier returning logits (N, classes) for images "
                         f"(N, C, H, W); got {tuple(got) if isinstance(got, torch.Size) else got}. "
                         "Pass a model URI of a PyTorch image classifier.")
    names, notes = [], []
    for name in order:
        if calls[name] > 1:
            notes.append(f"layer {name!r} runs {calls[name]} times per forward pass (a shared module); it "
                         "has no single output to attribute and is not analysed")
        else:
            names.append(name)
    if not names:
        raise ModelError(f"Expected {what} to contain nn.Conv2d or nn.Linear layers that run once per forward "
                         "pass; got none. Diagnose a convolutional or transformer image classifier.")
    modules = dict(net.named_modules())
    if embedding_layer is None:
        linears = [n for n in names if isinstance(modules[n], nn.Linear)]
        if not linears:
            raise ModelError(f"Expected {what} to end in an nn.Linear layer (its input is the embedding); got "
                             f"none among {names}. Pass --embedding-layer with a module path.")
        embedding = (linears[-1], "input")
    else:
        if embedding_layer not in modules or embedding_layer == "":
            raise ModelError(f"Expected --embedding-layer as a module path of {what}; got {embedding_layer!r}. "
                             f"Its modules include {_some(list(modules)[1:])}.")
        embedding = (embedding_layer, "output")
    pairs = list(zip(names, names[1:]))
    try:
        if exported is None:
            exported = torch.export.export(net, (example,), strict=False)
        decisions = chain_pairs(exported, pairs)
        fields = receptive_fields(exported, names)
    except Exception as exc:  # noqa: BLE001 -- a graph torch cannot read costs the weight records only
        notes.append(f"the model's graph could not be read ({_first_line(exc)}); no weight records")
        decisions = {p: "the model's graph could not be read" for p in pairs}
        fields = {}
    plain = [p for p, why in decisions.items() if why is None]
    pair_notes = {p: why for p, why in decisions.items() if why is not None}
    adapted = AdaptedNet(net, arch=f"pytorch:{_class_name(net, exported)}", layers=[(n, modules[n]) for n in names],
                         embedding=embedding, plain_pairs=plain, pair_notes=pair_notes, notes=notes,
                         num_outputs=logits.shape[1], normalisation=normalisation)
    adapted.receptive_fields = fields
    return adapted.eval()


def _class_name(net: nn.Module, exported) -> str:
    # an unflattened pt2 model's class is torch's; the graph remembers the original one
    for node in exported.graph.nodes if exported is not None and not isinstance(net, ANALYSED) else ():
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            if path == "" and isinstance(cls, str) and "." in cls:  # the root module's entry
                return cls.rpartition(".")[2]
    return type(net).__name__


def _some(names: list[str], k: int = 12) -> str:
    return ", ".join(names[:k]) + (f" … ({len(names)} in all)" if len(names) > k else "")


def _probe(net: nn.Module, example: torch.Tensor, what: str):
    """(analysed module paths in first-call order, logits, calls per path) from one forward pass."""
    order, calls, handles = [], {}, []

    def hook_for(name):
        def hook(module, args, out):
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
        return hook

    for name, module in net.named_modules():
        if isinstance(module, ANALYSED):
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            logits = net(example)
    except Exception as exc:  # noqa: BLE001 -- any failure on the example is the input's fault here
        raise ModelError(f"Expected {what} to take images of shape {tuple(example.shape[1:])} (the recipe's "
                         f"size); got {_first_line(exc)}. Set data.image_size to the size the model was "
                         "trained on.") from None
    finally:
        for h in handles:
            h.remove()
    return order, logits, calls


def materialise_layers(module: nn.Module) -> nn.Module:
    """``module`` (an unflattened exported program) with each leaf that is one ``conv2d``/``linear`` op
    replaced by a real ``nn.Conv2d``/``nn.Linear`` holding the same tensors; other modules untouched."""
    for path, leaf in list(module.named_modules()):
        graph = getattr(leaf, "graph", None)
        if not path or graph is None or isinstance(leaf, ANALYSED) or list(leaf.children()):
            continue
        calls = [n for n in graph.nodes if n.op == "call_function"]
        if len(calls) != 1 or op_name(calls[0]) not in LAYER_OPS:
            continue
        real = _rebuilt(leaf, calls[0])
        if real is not None:
            parent, _, name = path.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, name, real)
    return module


def _rebuilt(leaf: nn.Module, call) -> nn.Module | None:
    args = list(call.args)
    if any(getattr(a, "op", None) == "placeholder" for a in args[1:]) or \
            getattr(args[0], "op", None) != "placeholder":
        return None  # weights passed in, or input not the module's argument: not a plain layer

    def tensor(a):
        return None if a is None else leaf.get_parameter(a.target) if a.target in dict(leaf.named_parameters()) \
            else leaf.get_buffer(a.target)

    weight = tensor(args[1])
    bias = tensor(args[2]) if len(args) > 2 else None
    with torch.no_grad():
        if op_name(call) == "linear":
            real = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            if call.target != torch.ops.aten.conv2d.default:
                return None
            stride, padding, dilation, groups = (args + [None] * 7)[3:7]
            real = nn.Conv2d(weight.shape[1] * (groups or 1), weight.shape[0], tuple(weight.shape[2:]),
                             stride=tuple(stride or (1, 1)), padding=tuple(padding or (0, 0)),
                             dilation=tuple(dilation or (1, 1)), groups=groups or 1, bias=bias is not None)
        real.weight.copy_(weight)
        if bias is not None:
            real.bias.copy_(bias)
    return real.to(weight.device)
