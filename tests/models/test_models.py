"""Model registry: analysis layers, embedding/head split, weights files and freezing."""

from __future__ import annotations

import io

import pytest
import torch
from helpers.models import seeded
from torch import nn

from mlflow_transfer.errors import ModelError
from mlflow_transfer.models import MODELS, build_model, freeze_layers, load_state

NUM_CLASSES = 7  # not 10 or 1000, so a default-sized head would show
INPUT_SIZE = {"alexnet": 64}  # everything else runs at 32x32


def _input(name: str, n: int = 2) -> torch.Tensor:
    size = INPUT_SIZE.get(name, 32)
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("one_thread")


_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(params=sorted(MODELS))
def named_model(request):
    """(name, model) built once per name for the read-only tests (vgg11_bn and alexnet are large)."""
    name = request.param
    if name not in _CACHE:
        _CACHE[name] = seeded(name, NUM_CLASSES).eval()
    return name, _CACHE[name]


def _state_equal(a: dict, b: dict, keys) -> None:
    for key in keys:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- structure


def test_analysis_layers_are_unique_conv_or_linear(named_model):
    name, model = named_model
    layers = model.analysis_layers
    assert len(layers) > 0
    names = list(layers)
    assert len(set(names)) == len(names)
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in layers.values())
    assert len({id(m) for m in layers.values()}) == len(layers)  # no module listed twice
    # They are the model's own modules (so freezing them freezes the model).
    own = {id(m) for m in model.modules()}
    assert all(id(m) in own for m in layers.values())
    last = list(layers.values())[-1]
    assert isinstance(last, nn.Linear) and last.out_features == NUM_CLASSES
    assert model.arch == name


def test_analysis_layers_cover_every_conv_and_linear_of_the_main_path(named_model):
    name, model = named_model
    everything = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    listed = {id(m) for m in model.analysis_layers.values()}
    left_out = [m for m in everything if id(m) not in listed]
    if name == "resnet18":
        # conv1 + 8 basic blocks x 2 convs + fc; the 3 shortcut (downsample) 1x1 convs are left out.
        assert len(model.analysis_layers) == 18
        assert len(left_out) == 3 and all(m.kernel_size == (1, 1) for m in left_out)
    else:
        assert left_out == []


_RECORDS: dict[str, dict] = {}


@pytest.fixture
def forward_record(named_model):
    """One eval-mode forward pass per model (cached), recording the analysis layers' call order."""
    name, model = named_model
    if name not in _RECORDS:
        _RECORDS[name] = _record_forward(name, model)
    return _RECORDS[name]


def _record_forward(name, model):
    calls: list[str] = []
    seen = {}
    first_fc = next(m for m in model.analysis_layers.values() if isinstance(m, nn.Linear))

    # Hooks return None: a forward hook that returns a value would replace the module's output.
    def call_hook(n):
        def hook(mod, inp, out):
            calls.append(n)
        return hook

    def fc_hook(mod, inp, out):
        seen.setdefault("fc_input", inp[0])

    handles = [m.register_forward_hook(call_hook(n)) for n, m in model.analysis_layers.items()]
    handles.append(first_fc.register_forward_hook(fc_hook))
    x = _input(name)
    try:
        with torch.no_grad():
            logits = model(x)
            order = list(calls)
            emb = model.embedding(x)
            head_of_emb = model.head(emb)
    finally:
        for h in handles:
            h.remove()
    return {"order": order, "logits": logits, "emb": emb, "head_of_emb": head_of_emb,
            "first_fc": first_fc, "fc_input": seen["fc_input"]}


def test_analysis_layers_in_forward_order(named_model, forward_record):
    _, model = named_model
    assert forward_record["order"] == list(model.analysis_layers)


def test_embedding_is_2d_and_head_gives_logits(forward_record):
    emb, logits = forward_record["emb"], forward_record["logits"]
    assert emb.dim() == 2 and emb.shape[0] == 2
    assert logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(forward_record["head_of_emb"], logits, rtol=0, atol=0)


def test_embedding_is_the_input_of_the_first_linear_layer(forward_record):
    # eval mode: a dropout before the first FC is the identity.
    emb = forward_record["emb"]
    assert emb.shape[1] == forward_record["first_fc"].in_features
    torch.testing.assert_close(forward_record["fc_input"], emb, rtol=0, atol=0)


def test_alexnet32_embedding_is_flattened_fc6_input():
    model = seeded("alexnet-32", 10).eval()
    fc6 = model.analysis_layers["fc6"]
    assert isinstance(fc6, nn.Linear)
    x = _input("alexnet-32", 3)
    with torch.no_grad():
        emb = model.embedding(x)
    assert emb.shape == (3, fc6.in_features)
    # conv5 has 96 channels, pooled to 4x4 before the flatten.
    assert fc6.in_features == model.analysis_layers["conv5"].out_channels * 4 * 4
    assert list(model.analysis_layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def test_resnet18_has_no_downsample_layers():
    model = _CACHE.get("resnet18") or build_model("resnet18", NUM_CLASSES)
    assert not any("downsample" in n for n in model.analysis_layers)
    assert list(model.analysis_layers)[0] == "conv1"
    assert list(model.analysis_layers)[-1] == "fc"
    assert any("downsample" in n for n, _ in model.plain.named_modules())  # they exist, unlisted


def test_min_image_size_is_enough(named_model):
    # The registry's minimum image size really runs (alexnet needs >= 63 px).
    name, model = named_model
    size = MODELS[name].min_image_size
    with torch.no_grad():
        out = model(torch.rand(1, 3, max(size, 8), max(size, 8)))
    assert out.shape == (1, NUM_CLASSES)


def test_alexnet_below_min_image_size_fails():
    model = _CACHE.get("alexnet") or build_model("alexnet", NUM_CLASSES)
    with pytest.raises(RuntimeError):
        with torch.no_grad():
            model.eval()(torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------- errors


def test_unknown_model_lists_names():
    with pytest.raises(ModelError) as info:
        build_model("nope", 10)
    message = str(info.value)
    assert "nope" in message
    for name in MODELS:
        assert name in message


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_too_few_classes(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        build_model("alexnet-32", num_classes)


# --------------------------------------------------------------------------- weights


def _saved_with_shifted_buffers(model: nn.Module, path, shift: float):
    """``path``, holding ``model``'s state dict once its floating-point buffers (batch-norm running
    statistics) are shifted by ``shift``: non-default, so a load that missed them would show."""
    with torch.no_grad():
        for buf in model.buffers():
            if buf.dtype.is_floating_point:
                buf.add_(shift)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("name", ["alexnet-32", "resnet18"])
def test_own_state_dict_loads_back_exactly(tmp_path, name):
    original = seeded(name, 10)
    path = _saved_with_shifted_buffers(original, tmp_path / "w.pt", 0.25)
    fresh = seeded(name, 10, seed=1)
    assert not torch.equal(list(fresh.parameters())[0], list(original.parameters())[0])
    loaded = seeded(name, 10, seed=1, weights=str(path))
    a, b = original.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    _state_equal(a, b, a)


def test_own_state_dict_with_other_class_count_keeps_backbone(tmp_path):
    original = seeded("alexnet-32", 10)
    path = tmp_path / "w.pt"
    torch.save(original.state_dict(), path)
    reference = seeded("alexnet-32", 4, seed=5)
    loaded = seeded("alexnet-32", 4, seed=5, weights=str(path))
    a, b, r = original.state_dict(), loaded.state_dict(), reference.state_dict()
    head = [k for k in b if k.startswith("head.fc8.")]
    assert sorted(head) == ["head.fc8.bias", "head.fc8.weight"]
    _state_equal(a, b, [k for k in b if k not in head])
    _state_equal(r, b, head)  # the 4-way layer is the fresh initialisation
    assert b["head.fc8.weight"].shape == (4, 128)


def test_plain_torchvision_resnet18_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(123)
    plain = torchvision.models.resnet18(weights=None, num_classes=1000)
    path = _saved_with_shifted_buffers(plain, tmp_path / "resnet18_imagenet.pt", 0.5)

    reference = seeded("resnet18", 10, seed=9)
    model = seeded("resnet18", 10, seed=9, weights=str(path))

    src = plain.state_dict()
    got = model.plain.state_dict()
    backbone = [k for k in src if not k.startswith("fc.")]
    assert len(backbone) > 100
    _state_equal(src, got, backbone)
    # The TransferNet itself uses those tensors: its first conv is the loaded conv1.
    assert torch.equal(model.state_dict()["embedding.0.weight"], src["conv1.weight"])
    # The 10-way fc is freshly initialised (same as without weights), not a slice of the 1000-way one.
    assert got["fc.weight"].shape == (10, 512)
    assert torch.equal(got["fc.weight"], reference.plain.state_dict()["fc.weight"])
    assert torch.equal(got["fc.bias"], reference.plain.state_dict()["fc.bias"])
    assert not torch.equal(got["fc.weight"], src["fc.weight"][:10])
    # And the model computes with the loaded backbone: its embedding equals torchvision's features.
    x = torch.rand(2, 3, 32, 32)
    plain.eval(), model.eval()
    with torch.no_grad():
        feats = torch.flatten(plain.avgpool(plain.layer4(plain.layer3(plain.layer2(plain.layer1(
            plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))))))), 1)
        torch.testing.assert_close(model.embedding(x), feats)


@pytest.mark.parametrize("saved, built", [("alexnet-32", "resnet18"), ("resnet18", "alexnet-32")])
def test_wrong_architecture_does_not_fit(tmp_path, saved, built):
    path = tmp_path / "w.pt"
    torch.save(build_model(saved, 10).state_dict(), path)
    with pytest.raises(ModelError, match="does not fit"):
        build_model(built, 10, weights=str(path))


def test_state_dict_with_wrong_shape_does_not_fit(tmp_path):
    state = build_model("alexnet-32", 10).state_dict()
    state["embedding.conv2.weight"] = torch.zeros(96, 48, 5, 5)  # 3x3 in the model
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="does not fit"):
        build_model("alexnet-32", 10, weights=str(path))


def _saved_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(build_model("alexnet-32", 10).state_dict(), buffer)
    return buffer.getvalue()


def test_truncated_file_is_corrupt(tmp_path):
    data = _saved_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        build_model("alexnet-32", 10, weights=str(path))
    with pytest.raises(ModelError, match="corrupt"):
        load_state(path)


def test_garbage_file_is_corrupt(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(ModelError, match="corrupt"):
        load_state(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(ModelError, match="absent.pt"):
        build_model("alexnet-32", 10, weights=str(path))
    with pytest.raises(ModelError):
        load_state(path)


@pytest.mark.parametrize("content", [[1, 2], {"a": 1}, torch.zeros(3)])
def test_load_state_rejects_non_state_dicts(tmp_path, content):
    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(ModelError, match="state dict"):
        load_state(path)


def test_load_state_returns_the_saved_dict(tmp_path):
    state = {"a": torch.arange(4.0), "b.c": torch.ones(2, 2, dtype=torch.int64)}
    path = tmp_path / "x.pt"
    torch.save(state, path)
    loaded = load_state(path)
    assert set(loaded) == set(state)
    _state_equal(state, loaded, state)


# --------------------------------------------------------------------------- freezing


def test_freeze_first_two_layers():
    model = build_model("alexnet-32", 10)
    names = list(model.analysis_layers)
    frozen = freeze_layers(model, 2)
    assert frozen == names[:2]
    frozen_ids = {id(p) for n in names[:2] for p in model.analysis_layers[n].parameters()}
    assert len(frozen_ids) == 4  # weight + bias of conv1 and conv2
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in frozen_ids)


def test_freeze_resnet_depth_three():
    model = build_model("resnet18", 10)
    names = list(model.analysis_layers)
    freeze_layers(model, 3)
    for n, m in model.analysis_layers.items():
        expected = n not in names[:3]
        assert all(p.requires_grad == expected for p in m.parameters()), n
    # Batch norm stays trainable.
    assert all(p.requires_grad for m in model.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())


def test_freeze_zero_and_all():
    model = build_model("alexnet-32", 10)
    assert freeze_layers(model, 0) == []
    assert all(p.requires_grad for p in model.parameters())
    n = len(model.analysis_layers)
    assert freeze_layers(model, n) == list(model.analysis_layers)
    assert not any(p.requires_grad for m in model.analysis_layers.values() for p in m.parameters())


@pytest.mark.parametrize("depth", [-1, 9, 100])
def test_freeze_depth_out_of_range(depth):
    model = build_model("alexnet-32", 10)  # 8 analysis layers
    with pytest.raises(ModelError, match="freeze_depth"):
        freeze_layers(model, depth)
    assert all(p.requires_grad for p in model.parameters())
