"""`models.adapter`: any PyTorch classifier as a model the diagnostics accept, checked against
independent references (the export graph's op order, hand-written forwards, captum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerConductance
from helpers.models import foreign
from torch import nn

from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.instances import model_outputs
from mlflow_transfer.diagnostics.weights import extract_important_weights
from mlflow_transfer.errors import ModelError
from mlflow_transfer.models.adapter import adapt_classifier, materialise_layers
from mlflow_transfer.models.graph import module_path

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _graph_order(model: nn.Module) -> list[str]:
    """Conv/linear module paths in the order their ops appear in the exported graph (a reference
    independent of the adapter's hooks)."""
    ep = torch.export.export(model, (X,), strict=False)
    names = [module_path(n) for n in ep.graph.nodes
             if n.op == "call_function" and str(n.target) in ("aten.conv2d.default", "aten.linear.default")]
    return list(dict.fromkeys(names))


@pytest.mark.parametrize("kind, expected", [
    ("cnn", ["stem", "body.mix", "classify"]),
    ("vit", ["patch"] + [f"blocks.{b}.{m}" for b in (0, 1) for m in ("attn.qkv", "attn.proj", "fc1", "fc2")]
     + ["head"]),
])
def test_layers_in_execution_order_under_module_paths(kind, expected):
    model = foreign(kind)
    adapted = adapt_classifier(model, X)
    assert list(adapted.analysis_layers) == expected == _graph_order(model)
    assert all(adapted.analysis_layers[n] is model.get_submodule(n) for n in expected)


def test_resnet18_order_and_chains():
    model = foreign("resnet18")
    adapted = adapt_classifier(model, X)
    names = list(adapted.analysis_layers)
    assert names == _graph_order(model) and len(names) == 21  # 20 convs incl. 3 downsamples, fc
    assert names.index("layer2.0.downsample.0") == names.index("layer2.0.conv2") + 1  # called after conv2
    plain = adapted.plain_pairs
    assert ("conv1", "layer1.0.conv1") in plain                 # bn → relu → maxpool between them
    assert ("layer1.0.conv1", "layer1.0.conv2") in plain        # within a block
    assert ("layer1.0.conv2", "layer1.1.conv1") not in plain    # across the residual add
    assert "add" in adapted.pair_notes[("layer1.0.conv2", "layer1.1.conv1")]
    assert ("layer4.1.conv2", "fc") not in plain                # the last block's add, then the head


def test_vit_chains_and_token_layers():
    adapted = adapt_classifier(foreign("vit"), X)
    plain = adapted.plain_pairs
    assert ("blocks.0.fc1", "blocks.0.fc2") in plain and ("blocks.1.fc1", "blocks.1.fc2") in plain
    assert ("blocks.0.attn.qkv", "blocks.0.attn.proj") not in plain  # attention between them
    assert "matmul joins 2 activations" in adapted.pair_notes[("blocks.0.attn.qkv", "blocks.0.attn.proj")]
    assert plain == {("blocks.0.fc1", "blocks.0.fc2"), ("blocks.1.fc1", "blocks.1.fc2")}
    # weight records only for the plain pairs; token levels reduced by the max over tokens
    found = extract_important_weights(adapted, X, k=3, on_unsupported="skip")
    assert set(found) == set(plain)
    with pytest.raises(Exception, match="patch → blocks.0.attn.qkv.*layer_norm"):
        extract_important_weights(adapted, X, k=3)


def test_token_linear_weight_levels_match_a_literal_max_over_tokens():
    from mlflow_transfer.diagnostics.weights import LINEAR_LINEAR, _levels_chunks

    fc = nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    levels = np.concatenate(list(_levels_chunks(fc, LINEAR_LINEAR, 4, x, 8)))
    w = fc.weight.detach().numpy()
    literal = np.array([[[max(w[b, a] * x[p, t, a].item() for t in range(5)) for a in range(4)] for b in range(3)]
                        for p in range(2)])
    np.testing.assert_allclose(levels, literal, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_embedding_is_the_last_linear_input_from_the_same_pass(kind):
    model = foreign(kind)
    adapted = adapt_classifier(model, X)
    out = model_outputs(adapted, X)
    with torch.no_grad():
        by_hand = model.features(X)
        probs = torch.softmax(model(X), 1)
    np.testing.assert_allclose(out.embedding, by_hand.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.prediction, probs.argmax(1).numpy())
    np.testing.assert_allclose(out.confidence, probs.max(1).values.numpy(), rtol=1e-5)


def test_embedding_layer_by_name():
    model = foreign("cnn")
    adapted = adapt_classifier(model, X, embedding_layer="pool")
    with torch.no_grad():
        expected = model.pool(model.body(torch.nn.functional.max_pool2d(torch.relu(model.stem(X)), 2)))
    np.testing.assert_allclose(model_outputs(adapted, X).embedding, expected.flatten(1).numpy(), rtol=1e-5)
    with pytest.raises(ModelError, match="embedding-layer.*'nope'.*stem"):
        adapt_classifier(model, X, embedding_layer="nope")


def test_token_conductance_is_captums_maxed_over_tokens():
    torch.manual_seed(0)
    adapted = adapt_classifier(foreign("vit"), X)
    layer = adapted.analysis_layers["blocks.1.fc1"]
    target = torch.tensor([1, 4, 7])
    ours = layer_conductance(adapted, X, target, {"fc1": layer}, n_steps=8, method="gausslegendre")["fc1"]
    full = layer_conductance(adapted, X, target, {"fc1": layer}, n_steps=8, method="gausslegendre", reduce="none")["fc1"]
    captum = LayerConductance(adapted, layer).attribute(X, target=target, n_steps=8).detach().numpy()
    assert ours.shape == (3, 32) and full.shape == captum.shape == (3, 17, 32)  # units, not tokens
    np.testing.assert_allclose(full, captum, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours, captum.max(axis=1), rtol=1e-4, atol=1e-6)


def test_exported_model_back_as_real_layers():
    """A pt2 round trip (what MLflow stores): unflattened, its conv/linear leaves are real modules again,
    with the same outputs, names, chains and gradients."""
    model = foreign("resnet18")
    ep = torch.export.export(model, (X,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    net = materialise_layers(torch.export.unflatten(ep))
    assert isinstance(net.get_submodule("layer1.0.conv1"), nn.Conv2d)
    assert isinstance(net.get_submodule("fc"), nn.Linear)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    adapted = adapt_classifier(net, X, exported=ep)
    reference = adapt_classifier(model, X)
    assert adapted.arch == reference.arch == "pytorch:ResNet"  # the original class, from the graph
    assert list(adapted.analysis_layers) == list(reference.analysis_layers)
    assert adapted.plain_pairs == reference.plain_pairs
    cond = layer_conductance(adapted, X[:2], 3, {"c": adapted.analysis_layers["layer1.0.conv1"]}, n_steps=4)["c"]
    ref = layer_conductance(reference, X[:2], 3, {"c": reference.analysis_layers["layer1.0.conv1"]}, n_steps=4)["c"]
    np.testing.assert_allclose(cond, ref, rtol=1e-4, atol=1e-6)


def test_exported_vit_keeps_its_class_name():
    model = foreign("vit")
    ep = torch.export.export(model, (X,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    adapted = adapt_classifier(materialise_layers(torch.export.unflatten(ep)), X, exported=ep)
    assert adapted.arch == "pytorch:TinyViT"
    assert list(adapted.analysis_layers) == list(adapt_classifier(model, X).analysis_layers)


def test_shared_layer_is_left_out_with_a_note():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.again, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.again(self.conv(self.conv(x))).mean((2, 3)))

    adapted = adapt_classifier(Twice(), X)
    assert list(adapted.analysis_layers) == ["again", "fc"]
    assert any("'conv' runs 2 times" in n for n in adapted.notes)


def test_not_a_classifier_and_wrong_input_size():
    with pytest.raises(ModelError, match=r"logits \(N, classes\)"):
        adapt_classifier(nn.Sequential(nn.Conv2d(3, 4, 3)), X)
    with pytest.raises(ModelError, match="take images of shape.*image_size"):
        adapt_classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), X)


def test_input_normalisation_is_applied_in_front_of_the_model():
    model = foreign("cnn")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    adapted = adapt_classifier(model, X, normalisation=(mean, std))
    by_hand = (X - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(adapted(X).numpy(), model(by_hand).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model_outputs(adapted, X).embedding, model.features(by_hand).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert set(adapted.state_dict()) == {f"net.{k}" for k in model.state_dict()}  # not saved


def test_recipe_normalisation_keys():
    from helpers.tracking import tiny_recipe

    from mlflow_transfer.errors import RecipeError

    assert tiny_recipe().model.normalisation() is None
    assert tiny_recipe("model.mean=0.5", "model.std=0.25").model.normalisation() == ((0.5,), (0.25,))
    with pytest.raises(RecipeError, match="model.std.*positive"):
        tiny_recipe("model.std=0,1,1")
    with pytest.raises(RecipeError, match="model.mean.*three comma-separated"):
        tiny_recipe("model.mean=0.1,0.2")


def test_receptive_fields_from_the_graph():
    """Hand-worked: stem 3×3 pad 1 → (3, 1, −1); a 2×2 max pool then body.mix 3×3 pad 1 → (8, 2, −3);
    resnet18's 7×7/2 pad 3, 3×3/2 pad 1 pool, then 3×3 convs → (19, 4, −9), (27, 4, −13); after a
    residual add the whole image (None)."""
    from mlflow_transfer.diagnostics.features import receptive_field

    cnn = adapt_classifier(foreign("cnn"), X)
    assert cnn.receptive_fields == {"stem": (3, 1, -1), "body.mix": (8, 2, -3)}
    assert receptive_field(cnn, cnn.analysis_layers["body.mix"]) == (8, 2, -3)
    assert receptive_field(cnn, cnn.analysis_layers["classify"]) is None
    resnet = adapt_classifier(foreign("resnet18"), X)
    fields = resnet.receptive_fields
    assert fields["conv1"] == (7, 2, -3)
    assert fields["layer1.0.conv1"] == (19, 4, -9) and fields["layer1.0.conv2"] == (27, 4, -13)
    assert fields["layer1.1.conv1"] is None
    # the box agrees with the gradient support of one unit (a chain without max pooling's sparsity)
    model = foreign("cnn")
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    grabbed = {}
    handle = model.stem.register_forward_hook(lambda m, a, o: grabbed.__setitem__("o", o))
    model(x)
    handle.remove()
    grabbed["o"][0, :, 5, 9].sum().backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    size, jump, start = cnn.receptive_fields["stem"]
    assert (rows.min(), rows.max() + 1) == (start + 5 * jump, start + 5 * jump + size)
    assert (cols.min(), cols.max() + 1) == (start + 9 * jump, start + 9 * jump + size)
