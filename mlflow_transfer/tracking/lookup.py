"""Find runs again and read their models and checkpoints back, safely (no pickle)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from ..errors import ModelError, RunLookupError
from ..models import TransferNet, build_model, load_state
from ..models.adapter import adapt_classifier, materialise_layers
from ..models.registry import model_from_state
from ..tags import TAGS
from ..validation import check_relative_path, check_run_id, contained

MODEL_NAME = "model"           # name of the logged model of every source/target run
CHECKPOINT_DIR = "checkpoints"  # artifact folder of the per-epoch state dicts


def checkpoint_path(epoch: int) -> str:
    """Artifact path of the state dict after ``epoch`` (0 = before training)."""
    return f"{CHECKPOINT_DIR}/epoch_{epoch:03d}.pt"


@dataclass(frozen=True)
class SourceRun:
    """A validated source run: what a target run needs to start from it."""

    run_id: str
    experiment_id: str
    model_uri: str
    arch: str
    classes: tuple[str, ...]
    recipe: str


def get_run(run_id: str, client: MlflowClient | None = None):
    """The MLflow run ``run_id``, or a `RunLookupError` that says where it was looked for."""
    check_run_id(run_id)  # ids come from options and tags: never query with a malformed one
    client = client or MlflowClient()
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise RunLookupError(f"run {run_id!r} does not exist on the tracking server "
                             f"{mlflow.get_tracking_uri()}; check the id (mlflow ui lists runs) and "
                             "MLFLOW_TRACKING_URI") from None


def logged_model_uri(run) -> str | None:
    """``models:/<id>`` of the run's logged model called ``model``, or None if it has none."""
    client = MlflowClient()
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{MODEL_NAME}'")
    return f"models:/{found[0].model_id}" if found else None


def resolve_source_run(run_id: str) -> SourceRun:
    """Check that ``run_id`` is a finished source run with a logged model; return its facts.

    Raises:
        RunLookupError: the run does not exist, is not a source run, did not finish, or has no
            logged model.
    """
    run = get_run(run_id)
    role = run.data.tags.get(TAGS.role)
    if role != "source":
        raise RunLookupError(f"run {run_id} is not a source run (its {TAGS.role} tag is {role!r}); "
                             "pass the id of a run made by `train_source` or `main`")
    if run.info.status != "FINISHED":
        raise RunLookupError(f"source run {run_id} has status {run.info.status}, not FINISHED; "
                             "train the source again (mlflow run . -e train_source)")
    uri = logged_model_uri(run)
    if uri is None:
        raise RunLookupError(f"source run {run_id} has no logged model named {MODEL_NAME!r}; "
                             "train the source again (mlflow run . -e train_source)")
    return SourceRun(run_id, run.info.experiment_id, uri, run.data.tags[TAGS.model],
                     tuple(json.loads(run.data.tags[TAGS.classes])), run.data.tags.get(TAGS.recipe, ""))


def load_logged_model(source: SourceRun, *, trust_pickled: bool = False) -> TransferNet:
    """The source run's logged model, loaded into its architecture (see `load_model_weights`)."""
    return load_model_weights(source.model_uri, source.arch, len(source.classes), trust_pickled=trust_pickled)


PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
PICKLE_OPTION = "--trust-pickled-models"
STATE_DICT_FILE = "state_dict.pth"  # what mlflow.pytorch.log_state_dict writes


def pickle_allowed(trust_pickled: bool) -> bool:
    """Whether the user opted in to unpickling models: the CLI option, or MLflow's own variable set
    explicitly (MLflow's default is true; only an explicit setting counts as a choice)."""
    return trust_pickled or os.environ.get(PICKLE_ENV, "").strip().lower() in ("true", "1")


@contextlib.contextmanager
def _pickle_env(allowed: bool):
    # MLflow reads the variable at load time; "false" also makes it check that a pt2 archive
    # holds no pickled records (torch.export.load alone unpickles them).
    before = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "true" if allowed else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = before


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _check_ready(model_id: str, uri: str) -> None:
    try:
        status = MlflowClient().get_logged_model(model_id).status
    except MlflowException as exc:
        raise ModelError(f"Expected {uri} to be a logged model on {mlflow.get_tracking_uri()}; got "
                         f"{_first_line(exc)}: the URI does not resolve. Check the URI (runs:/<run id>/model "
                         "or models:/<model id>) and MLFLOW_TRACKING_URI.") from None
    if str(status) != "READY":
        # PENDING: still uploading (or its run was killed); FAILED: the upload broke off.
        raise ModelError(f"Expected the logged model {model_id} ({uri}) to be READY; got status {status}. "
                         "Wait for its run to finish, or log the model again.")


def _refuse_pickle(uri: str, why: str) -> ModelError:
    return ModelError(f"Expected a pickle-free model (MLflow's pt2 format or a state dict) at {uri}; got "
                      f"{why}. Unpickling runs any code the file carries, so it is refused by default: "
                      f"pass {PICKLE_OPTION} (or set {PICKLE_ENV}=true) only for a model you trust.")


def _load_module_or_state(local: Path, uri: str, trust_pickled: bool):
    """A module (pt2, or pickled with the opt-in) or a state dict, from a downloaded model."""
    if local.is_file():  # a state-dict artifact addressed directly (runs:/<id>/<file>.pt)
        return load_state(local)
    if not (local / "MLmodel").is_file():
        if (local / STATE_DICT_FILE).is_file():
            return load_state(local / STATE_DICT_FILE)
        raise ModelError(f"Expected an MLflow model (a folder with an MLmodel file) or a state dict at {uri}; "
                         f"got a folder holding {sorted(p.name for p in local.iterdir())[:10]}. Log the model "
                         "with mlflow.pytorch.log_model or mlflow.pytorch.log_state_dict.")
    try:
        meta = Model.load(str(local / "MLmodel"))
        flavor = meta.flavors["pytorch"]
        data = contained(local, str(flavor["model_data"]), "model data path", ModelError)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any malformed MLmodel ends in one message
        raise ModelError(f"Expected {uri} to be a PyTorch model (an MLmodel file with a pytorch flavor); "
                         f"got {_first_line(exc)}. Log it with mlflow.pytorch.log_model.") from None
    allowed = pickle_allowed(trust_pickled)
    if flavor.get("code") and not allowed:  # code_paths go onto sys.path when MLflow loads the model
        raise _refuse_pickle(uri, "a model that ships its own Python code (code_paths)")
    if isinstance(getattr(meta, "model_id", None), str) and meta.model_id not in uri:
        _check_ready(meta.model_id, uri)
    exported = data.is_dir() and (data / "model.pt2").is_file() and not (data / "model.pth").exists()
    if not exported and not allowed:
        raise _refuse_pickle(uri, "a model saved with serialization_format='pickle'")
    with _pickle_env(allowed):
        try:
            return mlflow.pytorch.load_model(str(local))
        except MlflowException as exc:
            if not allowed and "pickle" in str(exc).lower():
                raise _refuse_pickle(uri, "a pt2 archive that holds pickled records") from None
            raise


def check_model_uri(uri: str) -> str:
    """``uri`` if it names a model on the tracking server (``runs:/<run id>/<path>`` or ``models:/…``)
    with a well-formed run id and no ``..``; else `ModelError`. Other schemes and local paths are
    refused: downloading ``file:///`` or ``/`` would copy whatever the path names."""
    if isinstance(uri, str) and uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        check_run_id(run_id, "run id in the model URI", ModelError)
        check_relative_path(path, "run-relative model path in the model URI", ModelError)
        return uri
    if isinstance(uri, str) and uri.startswith("models:/") and len(uri) > len("models:/"):
        check_relative_path(uri[len("models:/"):], "model name or id in the model URI", ModelError)
        return uri
    raise ModelError(f"Expected a model URI of the form runs:/<run id>/<artifact path> or models:/<model id> "
                     f"(or models:/<name>/<version>); got {uri!r}. Copy it from `mlflow ui`.")


@contextlib.contextmanager
def _downloaded(uri: str):
    """The logged model at ``uri`` (checked: `check_model_uri`, READY), downloaded into a temporary
    folder that is removed afterwards."""
    check_model_uri(uri)
    if uri.startswith("models:/m-") and "/" not in uri[len("models:/"):]:
        _check_ready(uri[len("models:/"):], uri)  # before downloading a half-uploaded model
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # noqa: BLE001 -- MLflow raises many types for a bad URI
            raise ModelError(f"model URI {uri!r} does not resolve to a loadable PyTorch model "
                             f"({_first_line(exc)}); check the URI (runs:/<run id>/model or "
                             "models:/<name>/<version>) and MLFLOW_TRACKING_URI") from None
        yield local


def load_model_weights(uri: str, arch: str, num_classes: int, *, trust_pickled: bool = False) -> TransferNet:
    """The logged model at ``uri`` (``models:/…``, ``runs:/…``), as a fresh ``arch`` holding its weights.

    The one loader of models from a tracking server. By default it reads only pickle-free formats:
    MLflow's exported ``pt2`` archive (checked by MLflow to hold no pickled record) or a state dict
    (``torch.load(weights_only=True)``); a pickled model runs code when loaded, so it needs
    ``trust_pickled`` (``--trust-pickled-models``) or ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``
    set explicitly. A logged model must be READY. Only the tensors are kept: the returned model is
    built from the registry, never the unpickled object.

    Raises:
        ModelError: unresolvable URI, not READY, pickled without the opt-in, or not fitting ``arch``.
    """
    with _downloaded(uri) as local:
        try:
            loaded = _load_module_or_state(local, uri, trust_pickled)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 -- torch/MLflow raise many types for a corrupt model
            raise ModelError(f"model URI {uri!r} does not resolve to a loadable PyTorch model "
                             f"({_first_line(exc)}); log it again with mlflow.pytorch.log_model") from None
    state = loaded if isinstance(loaded, dict) else dict(loaded.state_dict())
    return model_from_state(state, arch, num_classes, f"the model at {uri}").eval()


def _exported_file(local: Path) -> Path | None:
    """The ``model.pt2`` archive of a downloaded MLflow model folder, if it is one (pt2 format)."""
    try:
        flavor = Model.load(str(local / "MLmodel")).flavors["pytorch"]
        data = contained(local, str(flavor["model_data"]), "model data path", ModelError)
    except Exception:  # noqa: BLE001 -- _load_module_or_state has already refused a malformed model
        return None
    pt2 = data / "model.pt2"
    return pt2 if data.is_dir() and pt2.is_file() and not (data / "model.pth").exists() else None


def load_classifier(uri: str, num_classes: int, *, image_size: int, channels: int = 3,
                    registry_arch: str | None = None, embedding_layer: str | None = None,
                    trust_pickled: bool = False, normalisation=None):
    """The logged model at ``uri`` as a model the diagnostics accept, for any PyTorch classifier.

    Loaded through MLflow's own loader with the pickle rules of `load_model_weights`. When its
    parameters fit ``registry_arch`` (a model of our own runs, or the recipe's architecture) it is that
    registry `TransferNet`, exactly as `load_model_weights` makes it; otherwise (or with an
    ``embedding_layer``) it is adapted (`models.adapter.adapt_classifier`): a pt2 model is read back
    with ``torch.export.unflatten`` (MLflow has just checked the archive is pickle-free), so module
    names, hooks and gradients work, and its conv/linear leaves are rebuilt as real modules; a
    pickled module (with the opt-in) is adapted as it is. ``normalisation`` (mean, std): what the
    adapted model applies in front of it (the recipe's ``model.mean``/``model.std``).

    Raises:
        ModelError: as `load_model_weights`; a state dict without an architecture; a model that is
            not a classifier of (N, ``channels``, ``image_size``, ``image_size``) images, or accepts one
            batch size only.
    """
    with _downloaded(uri) as local:
        try:
            loaded = _load_module_or_state(local, uri, trust_pickled)
            if isinstance(loaded, dict):
                if registry_arch is None:
                    raise ModelError(f"Expected a logged PyTorch model at {uri}; got a state dict, which does not "
                                     "say its architecture. Pass --arch, or log the model with "
                                     "mlflow.pytorch.log_model.")
                return model_from_state(loaded, registry_arch, num_classes, f"the model at {uri}").eval()
            if registry_arch is not None and embedding_layer is None:
                try:
                    return model_from_state(dict(loaded.state_dict()), registry_arch, num_classes,
                                            f"the model at {uri}").eval()
                except ModelError:
                    pass  # not the registry architecture: a classifier of its own
            pt2 = _exported_file(local) if local.is_dir() else None
            exported = torch.export.load(str(pt2)) if pt2 is not None else None
            net = materialise_layers(torch.export.unflatten(exported)) if exported is not None else loaded
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 -- torch/MLflow raise many types for a corrupt model
            raise ModelError(f"model URI {uri!r} does not resolve to a loadable PyTorch model "
                             f"({_first_line(exc)}); log it again with mlflow.pytorch.log_model") from None
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"Expected a PyTorch classifier (an nn.Module) at {uri}; got {type(net).__name__}. "
                         "Pass the URI of a model logged with mlflow.pytorch.log_model.")
    example = torch.rand(3, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    _check_any_batch(net, example, uri)
    return adapt_classifier(net, example, embedding_layer=embedding_layer, exported=exported,
                            what=f"the model at {uri}", normalisation=normalisation)


def _check_any_batch(net, example, uri: str) -> None:
    # torch.export specialises the batch size when the model's code fixes it (e.g. nn.MultiheadAttention
    # with batch_first); such a model runs only on its input example's batch size.
    try:
        with torch.no_grad():
            net(example)
    except Exception as exc:  # noqa: BLE001 -- only the fixed-batch case is said here; adapt_classifier says the rest
        if "shape[0]" in str(exc) and "dynamic" in str(exc).lower():
            raise ModelError(f"Expected the model at {uri} to take any batch size; got a model exported for one "
                             f"batch size only ({_first_line(exc)}). Log it again with a forward that does not "
                             "fix the batch size (torch.export must keep dimension 0 dynamic).") from None


def load_checkpoint(run_id: str, epoch: int) -> TransferNet:
    """The model of run ``run_id`` as it was after ``epoch`` (its ``checkpoints/`` artifact).

    Raises:
        RunLookupError: no such run or no checkpoint for that epoch (the message lists those that exist).
        ModelError: the checkpoint file is corrupt.
    """
    run = get_run(run_id)
    tags = run.data.tags
    if TAGS.model not in tags:
        raise RunLookupError(f"run {run_id} was not made by mlflow-transfer (no {TAGS.model} tag)")
    client = MlflowClient()
    available = sorted(a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR))
    wanted = checkpoint_path(epoch)
    if wanted not in available:
        raise RunLookupError(f"run {run_id} has no checkpoint for epoch {epoch}; it has "
                             f"{[Path(p).stem for p in available] or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=wanted, dst_path=tmp)
        try:
            state = load_state(Path(local))
        except ModelError as exc:
            raise ModelError(f"checkpoint {wanted} of run {run_id} is unreadable: {exc}") from None
    model = build_model(tags[TAGS.model], len(json.loads(tags[TAGS.classes])))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {wanted} of run {run_id} does not fit {tags[TAGS.model]}: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    return model
