"""Reading a model's ``torch.export`` graph: which consecutive analysis layers form a plain chain
(`chain_pairs`), and the receptive fields of conv layers fed by a plain conv/pool chain
(`receptive_fields`). Used by `models.adapter`; nodes are named by the module they ran in
(`module_path`, from ``nn_module_stack``).
"""

from __future__ import annotations

import operator

import torch

# Ops that keep a channel's identity between two layers (one activation in, same channels out).
CHAIN_OPS = frozenset({
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
    "relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "leaky_relu", "leaky_relu_", "elu",
    "hardtanh", "hardtanh_", "relu6", "hardswish", "hardswish_", "max_pool2d", "max_pool2d_with_indices",
    "avg_pool2d", "adaptive_avg_pool2d", "dropout", "dropout_", "feature_dropout", "flatten", "view",
    "reshape", "_unsafe_view", "clone", "contiguous", "alias", "detach", "identity",
})
_TUPLE_OPS = ("batch_norm", "max_pool2d_with_indices")  # whose element 0 is the activation
LAYER_OPS = ("conv2d", "linear")


def op_name(node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    return str(getattr(target, "_opname", getattr(target, "__name__", target)))


def module_path(node) -> str | None:
    """The path of the innermost module an exported graph's ``node`` ran in (its ``nn_module_stack``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else None


def chain_pairs(exported, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """For each (layer, next layer) pair of module paths: None when the pair is a plain chain in the
    graph of ``exported`` (a ``torch.export.ExportedProgram``), else why not (see the module docstring)."""
    active = _active_nodes(exported)
    ops: dict[str, list] = {}
    for node in exported.graph.nodes:
        if node.op == "call_function" and op_name(node) in LAYER_OPS:
            path = module_path(node)
            if path is not None:
                ops.setdefault(path, []).append(node)
    out = {}
    for prev, nxt in pairs:
        out[(prev, nxt)] = _chain_reason(ops.get(prev, []), ops.get(nxt, []), active, prev, nxt)
    return out


def _chain_reason(prev_ops, next_ops, active, prev, nxt) -> str | None:
    if len(prev_ops) != 1 or len(next_ops) != 1:
        return "a layer is not one op in the model's graph"
    node, steps, first_bad = next_ops[0].args[0], 0, None
    # Walk back the one-activation ops to layer i; a junction met on the way is the reason that
    # matters most (it says where a second path comes in), else the first op that is not plain.
    while node is not prev_ops[0]:
        steps += 1
        if getattr(node, "op", None) != "call_function" or steps > 10_000:
            return first_bad or f"{nxt}'s input does not come from {prev}"
        name = op_name(node)
        inputs = [i for i in node.all_input_nodes if i in active]
        if len(inputs) > 1:
            return (f"{name} joins {len(inputs)} activations between them (a residual junction, a "
                    "concatenation or attention)")
        if not inputs:
            return first_bad or f"{nxt}'s input does not come from {prev}"
        plain = name in CHAIN_OPS or (name == "getitem" and op_name(inputs[0]) in _TUPLE_OPS
                                      and node.args[1] == 0)
        if not plain and first_bad is None:
            first_bad = (f"{name} between them is not a channel-preserving op (batch norm, activation, "
                         "pooling, dropout, flatten)")
        node = inputs[0]
    return first_bad


_SPATIAL_OPS = frozenset({"conv2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d"})  # move the box


def receptive_fields(exported, names: list[str]) -> dict[str, tuple[int, int, int] | None]:
    """Per conv layer name: (size, jump, start) of its output units in input pixels (as
    `diagnostics.features.receptive_field`), when the graph from the input to it is one chain of convs,
    poolings and position-wise ops; else None (the whole image). Linear layers are left out."""
    active = _active_nodes(exported)
    ops = {}
    for node in exported.graph.nodes:
        if node.op == "call_function" and op_name(node) == "conv2d" and module_path(node) in names:
            ops.setdefault(module_path(node), []).append(node)
    return {name: _field(found[0], active) if len(found) == 1 else None for name, found in ops.items()}


def _active_nodes(exported) -> set:
    """Nodes whose value is a tensor (or tuple of them) computed from the user inputs."""
    user = set(exported.graph_signature.user_inputs)
    active = set()
    for node in exported.graph.nodes:
        val = node.meta.get("val")
        tensorish = isinstance(val, torch.Tensor) or (isinstance(val, (tuple, list)) and
                                                      any(isinstance(v, torch.Tensor) for v in val))
        if node.op == "placeholder":
            if node.name in user:
                active.add(node)
        elif tensorish and any(i in active for i in node.all_input_nodes):
            active.add(node)
    return active


def _field(node, active) -> tuple[int, int, int] | None:
    chain = []
    while node.op != "placeholder":
        if node.op != "call_function":
            return None
        name = op_name(node)
        inputs = [i for i in node.all_input_nodes if i in active]
        if len(inputs) != 1:
            return None
        if name in _SPATIAL_OPS:
            chain.append(node)
        elif name in CHAIN_OPS - {"flatten", "view", "reshape", "_unsafe_view"} or name == "getitem":
            pass
        else:
            return None
        node = inputs[0]
    size, jump, start = 1, 1, 0
    for op in reversed(chain):  # forward order
        args = list(op.args) + [None] * 6
        if op_name(op) == "conv2d":
            if op.target != torch.ops.aten.conv2d.default:
                return None  # e.g. padding="same"
            k = int(args[1].meta["val"].shape[-1])
            s, p, d = args[3] or [1], args[4] or [0], args[5] or [1]
        else:
            k, s, p = args[1], args[2] or args[1], args[3] or [0]
            d = args[4] or [1]
            k = k[0] if isinstance(k, (list, tuple)) else k
        s, p, d = (int(v[0] if isinstance(v, (list, tuple)) else v) for v in (s, p, d))
        size += (int(k) - 1) * d * jump
        start -= p * jump
        jump *= s
    return size, jump, start
