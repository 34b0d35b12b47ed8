"""Weight extraction of Ma et al. (VAST 2020), section 5.3.1 and Figure 3 (B).

This module is long because the activated level differs for each kind of layer pair (conv → conv,
conv → linear, linear → linear, below) and each kind needs its own memory-bounded computation and
checks; they share the capture hooks, the top-k counting and the selection, so they stay together.

For one class c and two consecutive analysis layers i → i+1 (N_prev neurons in layer i, N_next in
layer i+1), every target instance p of class c gives an N_next × N_prev matrix of *activated levels*:
how strongly the weight from neuron a of layer i to neuron b of layer i+1 fires on that instance
(step B-1). Each instance's matrix is reduced to a 0/1 mask of its top-k cells, the masks are summed
over the instances into counts (B-2), and the weights with the top-k counts are the representative
links between the two layers (B-3).

The activation that layer i+1 sees from layer i is the *input* of layer i+1, i.e. layer i's output
after the batch norm, ReLU, pooling, dropout (inactive in eval mode) and flattening between them.
We capture it with a forward pre-hook on layer i+1, so neuron a of layer i is channel a of that input
(conv) or feature a (linear). The activated level of weight a → b on instance p depends on the kind of
layer pair:

* conv → conv: ``level[p, b, a] = max over output positions of (W[b, a] ⋆ x_p[a])``, the
  cross-correlation of input map a with the kernel slice W[b, a] (the paper's "convolving the weight
  kernels on the activation values"), with the module's stride, padding, padding mode and dilation.
  It is the contribution of input channel a to output map b before the sum over channels and the
  bias; like the paper's neuron extraction, the map is reduced by its spatial maximum (signed).
* conv → linear: the conv output is flattened (torch order: channel-major), so channel a feeds the
  contiguous block of features ``a·s … (a+1)·s − 1`` with ``s = F / N_prev`` (the pooled map size).
  ``level[p, b, a] = Σ_{f ∈ block(a)} W[b, f] · x_p[f]``, the contribution of channel a to unit b.
* linear → linear: ``level[p, b, a] = W[b, a] · x_p[a]`` (block size 1 of the case above). For a
  linear layer over tokens (input (M, T, F), a transformer's MLP) the level is the maximum over tokens
  of ``W[b, a] · x_p[t, a]``, as conv levels are the maximum over positions.

In all three, ``Σ_a level`` plus the bias is the pre-activation of unit b (for conv: at each position
before the max), so the levels decompose layer i+1's output exactly; biases are not weights and get
no level. "Top-k values" are the largest signed levels: a strongly negative (inhibitory) link is not
counted as active.

Only chains that the pair's formula describes are supported: both layers must sit in the model's
``nn.Sequential`` structure with nothing between them but channel-preserving modules (batch norm,
elementwise activations, pooling, dropout, flatten). Pairs across residual junctions (ResNet blocks)
or through channel-mixing modules raise :class:`DiagnosticsError` naming the pair, or are left out
with ``on_unsupported="skip"``. A model that carries ``plain_pairs`` (an adapted foreign classifier,
``models.adapter``) has its pairs decided by its ``torch.export`` graph instead.

Memory: levels are computed in chunks of instances (and, for large conv layers, of output channels)
so no intermediate exceeds ``_MAX_ELEMENTS`` floats (128 MiB), and :func:`extract_important_weights`
streams the instances — it never holds the levels or layer inputs of all instances at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_transfer.diagnostics.ranking import resolve_k
from mlflow_transfer.errors import DiagnosticsError
from mlflow_transfer.validation import check_array, check_choice, check_int, check_layers_of

__all__ = [
    "ImportantWeights",
    "LinkKernels",
    "KERNEL_MAX_ELEMENTS",
    "activated_weights",
    "extract_important_weights",
    "important_weights",
    "layer_inputs",
    "link_kernels",
    "pair_link_kernels",
    "DEFAULT_WEIGHT_FRACTION",
]

# Share of the N_next × N_prev weights kept per instance and in the result: the paper gives no value
# for weights; 1 % keeps tens to hundreds of links per layer pair, which a link view can still draw
# (10 % as for neurons would be 1 600 links between two 128-channel layers).
DEFAULT_WEIGHT_FRACTION = 0.01

# Largest intermediate tensor (in float32 elements, 128 MiB) built while computing levels.
_MAX_ELEMENTS = 1 << 25

# Modules that keep channel a of their input as channel a of their output (or flatten it into the
# contiguous block a of features), so a pair of layers with only these between them is a direct chain.
_CHANNEL_PRESERVING = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity,
)

CONV_CONV, CONV_LINEAR, LINEAR_LINEAR = "conv-conv", "conv-linear", "linear-linear"


@dataclass(frozen=True)
class ImportantWeights:
    """The representative links between two consecutive layers for one class (Figure 3 B-3).

    Neuron a is in layer i (N_prev neurons: channels of a conv, units of a linear layer), neuron b
    in layer i+1 (N_next neurons).

    Attributes:
        kind: ``"conv-conv"``, ``"conv-linear"`` or ``"linear-linear"`` (see the module docstring).
        pairs: (K, 2) int64, rows ``(a, b)``, most often important first; equal counts are ordered
            by the flat index ``b · N_prev + a`` (lower first).
        counts: (K,) int64, the number of instances on which each kept weight was among the top-k.
        count_matrix: (N_next, N_prev) int64, the counts of every weight (the paper's w_{c,i,i+1}
            reshaped), so other selections or comparisons need no recomputation.
        weight_max_abs: (K,) float32, the largest |w| of the parameters behind each link: the kernel
            slice W[b, a] (conv → conv), the block W[b, block(a)] (conv → linear) or |W[b, a]|.
        weight_mean: (K,) float32, the mean of the same parameters (W[b, a] itself for linear → linear).
        mean_level: (N_next, N_prev) float32, every weight's activated level averaged over the
            instances — the "weight value" the network view shows for all links, important or not.
        k: the per-instance top-k used in step B-2.
        n_instances: number of instances the counts are summed over.
        sampled: the number of instances drawn when the class had more than ``max_instances``
            (then ``n_instances == sampled``), or None when every instance was used.
        instance_indices: (n_instances,) int64, sorted row indices of the used instances in the
            inputs that were passed in.
    """

    kind: str
    pairs: np.ndarray
    counts: np.ndarray
    count_matrix: np.ndarray
    weight_max_abs: np.ndarray
    weight_mean: np.ndarray
    mean_level: np.ndarray
    k: int
    n_instances: int
    sampled: int | None
    instance_indices: np.ndarray


# --------------------------------------------------------------------------------------------------
# Layer inputs


def layer_inputs(model: nn.Module, inputs: np.ndarray | torch.Tensor, layers: Mapping[str, nn.Module],
                 batch_size: int = 64) -> dict[str, np.ndarray]:
    """The input tensor each of ``layers`` receives when ``model`` runs on ``inputs``.

    The model runs in eval mode (batch norm on running statistics, dropout off) without gradients,
    in batches of ``batch_size``; its previous train/eval mode is restored and the hooks are removed
    afterwards, also when the forward pass fails.

    Args:
        model: any ``nn.Module`` that contains every module of ``layers``, each called once per
            forward pass.
        inputs: (N, ...) float array or tensor, what ``model`` takes (e.g. (N, 3, S, S) images), N >= 1.
        layers: name → ``nn.Conv2d``/``nn.Linear`` (e.g. ``model.analysis_layers``).
        batch_size: instances per forward pass, >= 1.

    Returns:
        name → float32 array: (N, C, H, W) for a conv layer, (N, F) for a linear layer.

    Raises:
        DiagnosticsError: for empty or non-finite inputs, a layer that is not part of ``model``, is
            never called or called twice per pass, a bad ``batch_size``, or a model that fails on
            the inputs.
    """
    x = _as_input_tensor(inputs)
    check_int(batch_size, "batch_size", low=1)
    check_layers_of(model, layers)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for batch in _captured_inputs(model, x, layers, batch_size):
        for name, tensor in batch.items():
            chunks[name].append(tensor.numpy())
    return {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}


def _captured_inputs(model: nn.Module, x: torch.Tensor, layers: Mapping[str, nn.Module],
                     batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yields, per batch of instances, name → float32 CPU tensor of that layer's input."""
    device = _device_of(model)
    was_training = model.training
    captured: dict[str, torch.Tensor] = {}
    duplicate: list[str] = []

    def hook_for(name):
        def hook(_module, args):
            if name in captured:
                duplicate.append(name)
            captured[name] = args[0].detach().to("cpu", torch.float32)
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in layers.items()]
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                captured.clear()
                batch = x[start:start + batch_size].to(device)
                try:
                    model(batch)
                except (RuntimeError, TypeError, ValueError) as exc:
                    raise DiagnosticsError(
                        f"The model failed on inputs of shape {tuple(batch.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); pass inputs in the "
                        "shape and dtype the model was built for.") from None
                if duplicate:
                    raise DiagnosticsError(
                        f"Layer {duplicate[0]!r} is called more than once per forward pass; its input "
                        "is ambiguous. Pass layers that are each used once.")
                missing = [name for name in layers if name not in captured]
                if missing:
                    raise DiagnosticsError(
                        f"Layer(s) {missing} are never called in the model's forward pass; pass only "
                        "layers on the forward path (e.g. from model.analysis_layers).")
                yield dict(captured)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# Activated levels (step B-1)


def activated_weights(module: nn.Conv2d | nn.Linear, layer_input: np.ndarray | torch.Tensor,
                      n_prev: int | None = None, *, batch_size: int = 64) -> np.ndarray:
    """Activated level of every weight from layer i into ``module`` (layer i+1), per instance.

    The three layer-pair kinds and their formulas are given in the module docstring: conv → conv
    (spatial max of ``W[b, a] ⋆ x[a]``), conv → linear (``Σ_{f ∈ block(a)} W[b, f]·x[f]``) and
    linear → linear (``W[b, a]·x[a]``).

    Args:
        module: layer i+1, an ``nn.Conv2d`` with ``groups == 1`` or an ``nn.Linear``.
        layer_input: what ``module`` receives (see :func:`layer_inputs`): (M, C_in, H, W) for a conv,
            (M, F) for a linear layer; M >= 1, finite.
        n_prev: N_prev, the number of neurons of layer i. For a conv it must equal ``in_channels``;
            for a linear layer it is the channel count of the previous conv (conv → linear, F must be
            a multiple of it) or ``in_features`` (linear → linear). None means ``in_channels`` /
            ``in_features``.
        batch_size: instances per chunk, >= 1 (fewer when a chunk would exceed the memory cap).

    Returns:
        (M, N_next, N_prev) float32 array in the units of layer i+1's pre-activation;
        N_next = ``out_channels`` / ``out_features``.

    Raises:
        DiagnosticsError: for another module type, a grouped conv, an input of the wrong shape, an
            ``n_prev`` that does not fit the layer, or non-finite inputs.
    """
    kind, n_prev = _pair_kind(module, n_prev)
    x = _check_layer_input(module, layer_input)
    check_int(batch_size, "batch_size", low=1)
    return np.concatenate(list(_levels_chunks(module, kind, n_prev, x, batch_size)), axis=0)


def _levels_chunks(module: nn.Module, kind: str, n_prev: int, x: torch.Tensor,
                   batch_size: int) -> Iterator[np.ndarray]:
    weight = module.weight.detach().to("cpu", torch.float32)
    if kind == CONV_CONV:
        yield from _conv_levels(module, weight, x, batch_size)
        return
    n_next, features = weight.shape
    if x.ndim == 3:  # a linear layer over tokens (M, T, F): linear → linear, max over tokens
        step = max(1, min(batch_size, _MAX_ELEMENTS // max(1, x.shape[1] * n_next * features)))
        with torch.no_grad():
            for start in range(0, x.shape[0], step):
                yield torch.einsum("pta,ba->ptba", x[start:start + step], weight).amax(dim=1).numpy()
        return
    size = features // n_prev
    # (N_next, N_prev, s): channel a's block of features, in torch's channel-major flatten order.
    blocks = weight.reshape(n_next, n_prev, size)
    step = max(1, min(batch_size, _MAX_ELEMENTS // max(1, n_next * n_prev * size)))
    with torch.no_grad():
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step].reshape(-1, n_prev, size)
            yield torch.einsum("pas,bas->pba", chunk, blocks).numpy()


def _conv_levels(module: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor,
                 batch_size: int) -> Iterator[np.ndarray]:
    c_out, c_in = weight.shape[:2]
    if module.padding_mode != "zeros":
        x = F.pad(x, _explicit_padding(module), mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    with torch.no_grad():
        out_h, out_w = F.conv2d(x[:1, :1], weight[:1, :1], None, module.stride, padding,
                                module.dilation).shape[-2:]
        per_map = c_in * out_h * out_w
        # Chunk output channels only when one instance with all of them would not fit the cap.
        c_block = max(1, min(c_out, _MAX_ELEMENTS // per_map))
        step = max(1, min(batch_size, _MAX_ELEMENTS // (per_map * c_block)))
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            parts = []
            for b0 in range(0, c_out, c_block):
                w = weight[b0:b0 + c_block]
                cb = w.shape[0]
                # groups=C_in convolves input map a alone with the kernels W[b0:b0+cb, a]: output
                # channel a·cb + j is W[b0 + j, a] ⋆ x[a], the per-channel terms the full conv sums.
                kernels = w.transpose(0, 1).reshape(c_in * cb, 1, *w.shape[2:])
                maps = F.conv2d(chunk, kernels, None, module.stride, padding, module.dilation, c_in)
                peak = maps.reshape(chunk.shape[0], c_in, cb, -1).amax(dim=-1)
                parts.append(peak.transpose(1, 2))
            yield torch.cat(parts, dim=1).numpy()


def _explicit_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    if isinstance(module.padding, str):
        raise DiagnosticsError(
            f"Conv layers with padding={module.padding!r} and padding_mode={module.padding_mode!r} are "
            "not supported; use an explicit integer padding or padding_mode='zeros'.")
    ph, pw = module.padding
    return (pw, pw, ph, ph)


# --------------------------------------------------------------------------------------------------
# Top-k per instance, counts and selection (steps B-2, B-3)


def important_weights(levels: np.ndarray, module: nn.Conv2d | nn.Linear, *,
                      fraction: float = DEFAULT_WEIGHT_FRACTION, k: int | None = None,
                      keep: int | None = None) -> ImportantWeights:
    """Important weights of one layer pair from the activated levels of one class's instances.

    Per instance (row p of ``levels``, flattened to N_next·N_prev cells) the top-k cells are set to 1
    and the rest to 0; ties at the k-th value go to the lower flat index ``b · N_prev + a``, so every
    instance marks exactly k weights. The 0/1 masks are summed over the instances into counts and the
    ``keep`` weights with the largest counts are returned (ties again by lower flat index).

    Args:
        levels: (M, N_next, N_prev) real array from :func:`activated_weights`, M >= 1, finite.
        module: layer i+1, the layer the levels belong to (for the kind and the weight values).
        fraction: share of the N_next·N_prev weights used as k when ``k`` is None, in (0, 1];
            ``k = max(1, ceil(fraction · N_next · N_prev))``. Default 1 % (the paper gives no value).
        k: the per-instance top-k, in [1, N_next·N_prev]; overrides ``fraction``.
        keep: how many weights to return, in [1, N_next·N_prev]; None means k (the paper's choice).

    Returns:
        :class:`ImportantWeights` with ``sampled=None`` and ``instance_indices = arange(M)``.

    Raises:
        DiagnosticsError: for a levels array that is not 3-D, empty, non-finite or does not fit
            ``module``, or a bad ``fraction``/``k``/``keep``.
    """
    array = check_array(levels, "the activated levels", ndim=3, layout="(instances, N_next, N_prev)",
                        min_shape=(1, 1, 1), finite=False,
                        hints={"shape": "Compute them with activated_weights()."})
    kind, n_prev = _pair_kind(module, array.shape[2])
    n_next = _n_out(module)
    if array.shape[1] != n_next:
        raise DiagnosticsError(
            f"Expected levels with N_next = {n_next} (the layer's output neurons); got N_next={array.shape[1]}. "
            "Pass the module the levels were computed for.")
    check_array(array, "the activated levels", ndim=3, layout="(instances, N_next, N_prev)")
    k_in, k_keep = _resolve_counts(n_next * n_prev, fraction, k, keep, "the layer pair")
    counts = _topk_mask(array, k_in).sum(axis=0, dtype=np.int64).reshape(n_next, n_prev)
    return _select(counts, array.mean(axis=0, dtype=np.float64), module, kind, k_in, k_keep,
                   np.arange(array.shape[0], dtype=np.int64), None)


def _topk_mask(levels: np.ndarray, k: int) -> np.ndarray:
    """(M, ...) levels → (M, N) bool mask, exactly k True per row; ties go to the lower flat index."""
    rows = levels.reshape(levels.shape[0], -1)
    n = rows.shape[1]
    # The k-th largest value of each row; everything strictly above it is in, and the remaining slots
    # go to the cells equal to it in index order (a cumulative count keeps the first ones).
    kth = np.partition(rows, n - k, axis=1)[:, n - k][:, None]
    above = rows > kth
    equal = rows == kth
    free = k - above.sum(axis=1, keepdims=True)
    return above | (equal & (np.cumsum(equal, axis=1) <= free))


def _select(counts: np.ndarray, mean_level: np.ndarray, module: nn.Module, kind: str, k: int, keep: int,
            indices: np.ndarray, sampled: int | None) -> ImportantWeights:
    flat = counts.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:keep]
    n_prev = counts.shape[1]
    b, a = np.divmod(order, n_prev)
    max_abs, mean = _weight_summaries(module, n_prev)
    return ImportantWeights(
        kind=kind,
        pairs=np.stack([a, b], axis=1).astype(np.int64),
        counts=flat[order].astype(np.int64),
        count_matrix=counts.astype(np.int64),
        weight_max_abs=max_abs[b, a],
        weight_mean=mean[b, a],
        mean_level=mean_level.astype(np.float32),
        k=int(k),
        n_instances=int(indices.shape[0]),
        sampled=sampled,
        instance_indices=indices,
    )


def _weight_summaries(module: nn.Module, n_prev: int) -> tuple[np.ndarray, np.ndarray]:
    """(N_next, N_prev) max |w| and mean w of the parameters behind each link a → b."""
    weight = module.weight.detach().to("cpu", torch.float32)
    grouped = weight.reshape(weight.shape[0], n_prev, -1)
    return grouped.abs().amax(dim=-1).numpy(), grouped.mean(dim=-1).numpy()


# --------------------------------------------------------------------------------------------------
# The parameters behind each link (the network view's weight values and clicked feature maps)

# Most parameters one layer pair's kernels keep (per model): 4 Mi elements, 8 MiB in float16. A small
# conv pair (e.g. 128 × 128 × 3 × 3 = 147 456) is kept whole; AlexNet's fc7 (4096 × 4096) is not, and
# keeps only the rows of the next layer's neurons the caller asks for (its important ones).
KERNEL_MAX_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class LinkKernels:
    """The parameters behind the links a → b of one model's layer pair, independent of any class.

    Attributes:
        kind: as :attr:`ImportantWeights.kind`.
        values: (N_next, N_prev) float32, each link's parameters summed: the kernel slice W[b, a]
            (conv → conv), the block W[b, block(a)] (conv → linear) or W[b, a]. The sum is the link's
            gain for a constant input (its activated level per unit of input a), so it keeps the sign
            of what the link passes on and decomposes the pre-activation like the levels do.
        kernels: float32 "feature maps" of the links into the next-layer neurons ``rows``:
            (R, N_prev, kh, kw) the conv kernels (conv → conv); (R, N_prev, h, w) the linear weights
            of each input channel's map, torch's flatten order (conv → linear); (R, N_prev) the
            weight rows (linear → linear).
        rows: (R,) int64 ascending, the next-layer neurons b that ``kernels`` holds: all of them
            unless the whole would exceed ``max_elements``.
        note: why rows are missing, "" when ``kernels`` is whole.
    """

    kind: str
    values: np.ndarray
    kernels: np.ndarray
    rows: np.ndarray
    note: str = ""


def _map_shape(model: nn.Module, prev: nn.Module, nxt: nn.Module, block: int) -> tuple[int, int]:
    """(h, w) of the map that one channel of ``prev`` flattens into before ``nxt``: an adaptive pool's
    output size between them when there is one, else a square map, else a row of ``block`` features."""
    chain = _flat_chain(model)
    ids = [id(m) for m in chain]
    if id(prev) in ids and id(nxt) in ids:
        for m in reversed(chain[ids.index(id(prev)) + 1:ids.index(id(nxt))]):
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
                if None not in size and size[0] * size[1] == block:
                    return int(size[0]), int(size[1])
                break
    side = int(round(block ** 0.5))
    return (side, side) if side * side == block else (1, block)


def link_kernels(model: nn.Module, prev: str, nxt: str, *, keep_rows=None,
                 max_elements: int = KERNEL_MAX_ELEMENTS) -> LinkKernels:
    """The parameters behind every link between analysis layers ``prev`` → ``nxt`` of ``model``
    (a supported pair, see the module docstring), as :class:`LinkKernels`.

    Args:
        keep_rows: the next-layer neurons whose kernels to keep when all of them would exceed
            ``max_elements`` (then kept in ascending order while they fit; None: the first ones).
        max_elements: the most kernel parameters kept, >= 1.
    """
    layers = getattr(model, "analysis_layers", None)
    if not isinstance(layers, Mapping) or prev not in layers or nxt not in layers:
        raise DiagnosticsError(f"Expected analysis layers {prev!r} and {nxt!r} of the model; got "
                               f"{list(layers) if isinstance(layers, Mapping) else 'no analysis layers'}.")
    check_int(max_elements, "max_elements", low=1)
    module = layers[nxt]
    kind, n_prev = _pair_kind(module, _n_out(layers[prev]), pair=(prev, nxt))
    if isinstance(layers[prev], nn.Conv2d) and isinstance(module, nn.Linear):
        kind = CONV_LINEAR
    weight = module.weight.detach().to("cpu", torch.float32)
    n_next = weight.shape[0]
    if kind == CONV_CONV:
        maps = weight  # (N_next, N_prev, kh, kw)
    elif kind == CONV_LINEAR:
        maps = weight.reshape(n_next, n_prev, *_map_shape(model, layers[prev], module, weight.shape[1] // n_prev))
    else:
        maps = weight  # (N_next, N_prev)
    values = maps.reshape(n_next, n_prev, -1).sum(dim=-1).numpy().astype(np.float32)
    per_row = max(int(np.prod(maps.shape[1:])), 1)
    rows, note = np.arange(n_next, dtype=np.int64), ""
    if n_next * per_row > max_elements:
        wanted = np.arange(n_next) if keep_rows is None else np.unique(np.asarray(keep_rows, dtype=np.int64))
        wanted = wanted[(wanted >= 0) & (wanted < n_next)]
        fit = max(max_elements // per_row, 1)
        rows = wanted[:fit].astype(np.int64)
        note = (f"{prev} → {nxt}: kernels of {len(rows)} of {n_next} {nxt} neurons kept (all {n_next} would be "
                f"{n_next * per_row} parameters, over the cap of {max_elements})")
    return LinkKernels(kind, values, maps[torch.from_numpy(rows)].numpy().astype(np.float32), rows, note)


def pair_link_kernels(models: Mapping[str, nn.Module], important, weights, classes,
                      notes: list[str]) -> dict[str, dict[tuple[str, str], LinkKernels]]:
    """For a diagnosed pair (``important``, ``weights``: the engine's, per model and class), each model's
    link parameters for the layer pairs that have weight matrices; where a pair's kernels are capped,
    those into the next layer's neurons important for some class in either model are kept (those whose
    cells the network view draws, and so can be clicked). A cap's note is appended to ``notes``."""
    order = list(models["target"].analysis_layers)
    pairs = sorted({p for c in classes for p in weights["target"].get(c, {})}, key=lambda p: order.index(p[0]))
    out = {r: {} for r in models}
    for prev, nxt in pairs:
        keep = sorted({int(j) for r in models for c in classes for j in important[r][c][nxt]})
        for role, model in models.items():
            out[role][(prev, nxt)] = found = link_kernels(model, prev, nxt, keep_rows=keep)
            if found.note:
                notes.append(f"{role} model: {found.note}")
    return out


# --------------------------------------------------------------------------------------------------
# Whole model


def extract_important_weights(model: nn.Module, inputs: np.ndarray | torch.Tensor, *,
                              fraction: float = DEFAULT_WEIGHT_FRACTION, k: int | None = None,
                              keep: int | None = None, batch_size: int = 64,
                              max_instances: int | None = None, seed: int = 0,
                              on_unsupported: str = "raise") -> dict[tuple[str, str], ImportantWeights]:
    """Important weights between every pair of consecutive analysis layers, for one class.

    Streams the instances: each batch runs through the model once, and the levels of every layer pair
    are reduced to per-instance top-k masks and added to the counts before the next batch, so memory
    stays bounded by the batch (and the ``_MAX_ELEMENTS`` cap) whatever the number of instances.

    Args:
        model: a ``TransferNet`` (or any module with ``analysis_layers``, an ordered name → module
            mapping, and an ``embedding``/``head`` or itself an ``nn.Sequential``).
        inputs: (M, ...) the target instances of class c, as the model takes them, M >= 1.
        fraction, k, keep: as in :func:`important_weights`, resolved per layer pair.
        batch_size: instances per forward pass, >= 1.
        max_instances: when M exceeds it, a seeded uniform sample of this many instances (without
            replacement) is used and recorded as ``sampled``; None uses every instance.
        seed: seed of that sample (``numpy.random.default_rng``).
        on_unsupported: ``"raise"`` (default) raises for a pair that is not a direct conv → conv,
            conv → linear or linear → linear chain; ``"skip"`` leaves such pairs out of the result.

    Returns:
        ``(layer_i, layer_i+1)`` → :class:`ImportantWeights`, in forward order.

    Raises:
        DiagnosticsError: for a model without analysis layers, an unsupported pair (with
            ``on_unsupported="raise"``), bad inputs or parameters, or a model that produces
            non-finite activations.
    """
    layers = getattr(model, "analysis_layers", None)
    if not isinstance(layers, Mapping) or len(layers) < 2:
        raise DiagnosticsError(
            "The model needs `analysis_layers`, an ordered mapping of at least two conv/linear layers "
            f"(a TransferNet from mlflow_transfer.models.build_model); got {type(model).__name__} with "
            f"{'no analysis_layers' if layers is None else f'{len(layers)} analysis layer(s)'}.")
    check_choice(on_unsupported, "on_unsupported", ("raise", "skip"))
    check_int(batch_size, "batch_size", low=1)
    if max_instances is not None:
        check_int(max_instances, "max_instances", low=1)
    x = _as_input_tensor(inputs)

    pairs = _supported_pairs(model, layers, on_unsupported)
    plans = {}
    for prev, nxt in pairs:
        module = layers[nxt]
        if isinstance(layers[prev], nn.Linear) and module.in_features != layers[prev].out_features:
            raise DiagnosticsError(
                f"Layer pair {prev} → {nxt}: {prev} has {layers[prev].out_features} outputs but {nxt} "
                f"takes {module.in_features} features; consecutive linear layers must match.")
        kind, n_prev = _pair_kind(module, _n_out(layers[prev]), pair=(prev, nxt))
        if isinstance(layers[prev], nn.Conv2d) and isinstance(module, nn.Linear):
            kind = CONV_LINEAR  # also when the flattened map is 1×1 (block size 1)
        total = _n_out(module) * n_prev
        k_in, k_keep = _resolve_counts(total, fraction, k, keep, f"layer pair {prev} → {nxt}")
        plans[(prev, nxt)] = (module, kind, n_prev, k_in, k_keep)

    if not plans:
        return {}
    indices = np.arange(x.shape[0], dtype=np.int64)
    sampled = None
    if max_instances is not None and x.shape[0] > max_instances:
        indices = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_instances, replace=False))
        sampled = int(max_instances)
        x = x[torch.from_numpy(indices)]

    counts = {pair: np.zeros((_n_out(plan[0]), plan[2]), dtype=np.int64) for pair, plan in plans.items()}
    level_sums = {pair: np.zeros(c.shape, dtype=np.float64) for pair, c in counts.items()}
    hooked = {nxt: layers[nxt] for _, nxt in plans}
    for batch in _captured_inputs(model, x, hooked, batch_size):
        for (prev, nxt), (module, kind, n_prev, k_in, _) in plans.items():
            layer_input = _check_layer_input(module, batch[nxt], name=nxt)
            for levels in _levels_chunks(module, kind, n_prev, layer_input, batch_size):
                counts[(prev, nxt)] += _topk_mask(levels, k_in).reshape(levels.shape).sum(axis=0)
                level_sums[(prev, nxt)] += levels.sum(axis=0, dtype=np.float64)
    return {pair: _select(counts[pair], level_sums[pair] / len(indices), module, kind, k_in, k_keep,
                          indices, sampled)
            for pair, (module, kind, _, k_in, k_keep) in plans.items()}


def _supported_pairs(model: nn.Module, layers: Mapping[str, nn.Module],
                     on_unsupported: str) -> list[tuple[str, str]]:
    names = list(layers)
    decided = getattr(model, "plain_pairs", None)
    if decided is not None:  # an adapted model: its export graph decided (models.graph.chain_pairs)
        return _graph_pairs(model, names, decided, on_unsupported)
    chain = _flat_chain(model)
    position = {id(m): i for i, m in enumerate(chain)}
    pairs = []
    for prev, nxt in zip(names[:-1], names[1:]):
        reason = None
        i, j = position.get(id(layers[prev])), position.get(id(layers[nxt]))
        if i is None or j is None:
            reason = ("a layer sits inside a non-sequential block (e.g. a residual block), so its input "
                      "is not a function of the previous layer's channels alone")
        elif j <= i:
            reason = "the layers are not in forward order"
        else:
            between = [m for m in chain[i + 1:j] if not isinstance(m, _CHANNEL_PRESERVING)]
            if between:
                reason = (f"{type(between[0]).__name__} between them mixes channels; only batch norm, "
                          "activations, pooling, dropout and flatten may sit between the two layers")
        if reason is None and isinstance(layers[prev], nn.Linear) and isinstance(layers[nxt], nn.Conv2d):
            reason = "linear → conv pairs have no channel correspondence"
        if reason is None:
            pairs.append((prev, nxt))
        elif on_unsupported == "raise":
            raise DiagnosticsError(
                f"Layer pair {prev} → {nxt} is not supported for weight extraction: {reason}. Only direct "
                "conv → conv, conv → linear and linear → linear chains are; pass on_unsupported='skip' "
                "to leave such pairs out.")
    return pairs


def _graph_pairs(model: nn.Module, names: list[str], plain, on_unsupported: str) -> list[tuple[str, str]]:
    pairs = []
    notes = getattr(model, "pair_notes", {})
    for pair in zip(names[:-1], names[1:]):
        if pair in plain:
            pairs.append(pair)
        elif on_unsupported == "raise":
            raise DiagnosticsError(
                f"Layer pair {pair[0]} → {pair[1]} is not supported for weight extraction: "
                f"{notes.get(pair, 'the two layers are not consecutive in the model')}. Only plain chains "
                "are; pass on_unsupported='skip' to leave such pairs out.")
    return pairs


def _flat_chain(model: nn.Module) -> list[nn.Module]:
    """The leaf modules in the order a sequential forward pass calls them."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _flat_chain(child)]
    embedding, head = getattr(model, "embedding", None), getattr(model, "head", None)
    if isinstance(embedding, nn.Module) and isinstance(head, nn.Module):
        # TransferNet.forward is head(embedding(x)).
        return _flat_chain(embedding) + _flat_chain(head)
    return [model]


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _pair_kind(module: nn.Module, n_prev: int | None,
               pair: tuple[str, str] | None = None) -> tuple[str, int]:
    where = f"Layer pair {pair[0]} → {pair[1]}: " if pair else ""
    if n_prev is not None:
        check_int(n_prev, f"{where}n_prev", low=1)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise DiagnosticsError(
                f"{where}grouped convolutions (groups={module.groups}) are not supported: weight W[b, a] "
                "exists only for some channel pairs. Use a model with groups=1 convs.")
        if n_prev is not None and n_prev != module.in_channels:
            raise DiagnosticsError(
                f"{where}the conv layer takes {module.in_channels} input channels but the previous layer "
                f"has {n_prev} neurons; a conv → conv pair needs them equal.")
        return CONV_CONV, module.in_channels
    if isinstance(module, nn.Linear):
        features = module.in_features
        if n_prev is None or n_prev == features:
            return LINEAR_LINEAR, features
        if features % n_prev:
            raise DiagnosticsError(
                f"{where}the linear layer takes {features} features, which is not a multiple of the "
                f"previous layer's {n_prev} channels, so the features cannot be split into one block "
                "per channel. Pass the channel count of the conv that feeds the flatten.")
        return CONV_LINEAR, int(n_prev)
    raise DiagnosticsError(
        f"{where}expected layer i+1 to be an nn.Conv2d or nn.Linear; got {type(module).__name__}.")


def _n_out(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise DiagnosticsError(f"Expected an nn.Conv2d or nn.Linear analysis layer; got {type(module).__name__}.")


def _check_layer_input(module: nn.Module, layer_input, name: str | None = None) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(layer_input) if not isinstance(layer_input, torch.Tensor) else layer_input)
    x = x.detach().to("cpu", torch.float32)
    label = f"layer {name!r}" if name else "the layer"
    if isinstance(module, nn.Conv2d):
        if x.ndim != 4 or x.shape[1] != module.in_channels or x.shape[0] < 1:
            raise DiagnosticsError(
                f"Expected the input of {label} (a conv with {module.in_channels} input channels) as "
                f"(M, {module.in_channels}, H, W) with M >= 1; got shape {tuple(x.shape)}.")
    elif isinstance(module, nn.Linear):
        if x.ndim not in (2, 3) or x.shape[-1] != module.in_features or x.shape[0] < 1:
            raise DiagnosticsError(
                f"Expected the input of {label} (a linear layer with {module.in_features} input "
                f"features) as (M, {module.in_features}) or over tokens (M, T, {module.in_features}) with "
                f"M >= 1; got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise DiagnosticsError(
            f"Expected the input of {label} as finite values; got NaN or infinite values. Check the model "
            "(diverged weights?) and the inputs.")
    return x


def _as_input_tensor(inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        x = inputs.detach()
    else:
        array = np.asarray(inputs)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise DiagnosticsError(f"Expected real-valued inputs; got dtype {array.dtype}.")
        x = torch.from_numpy(np.ascontiguousarray(array))
    if x.ndim < 2 or x.shape[0] < 1:
        raise DiagnosticsError(
            f"Expected inputs of shape (N, ...) with N >= 1 instances; got shape {tuple(x.shape)}. A class "
            "with no instances has no important weights: skip it.")
    x = x.float()
    if not torch.isfinite(x).all():
        raise DiagnosticsError("Expected inputs of finite values; got NaN or infinite values.")
    return x


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _resolve_counts(total: int, fraction: float, k: int | None, keep: int | None,
                    where: str) -> tuple[int, int]:
    weights = f"({where} has {total} weights)"
    if k is not None:
        check_int(k, "k (weights kept per instance)", low=1, high=total, doc=weights)
    k_in = resolve_k(total, fraction=fraction, k=k)
    if keep is None:
        return k_in, k_in
    return k_in, check_int(keep, "keep", low=1, high=total, doc=weights)
