"""The models: LeNet-5, the 3-layer CNN substitute, VGG-13 and ResNet-56, each registered with the input shapes
it accepts (:mod:`pclc.models._registry`)."""

from pclc.models import cnn3, lenet, resnet, vgg  # noqa: E402,F401,I001  (registers the models)
from pclc.models._registry import (
    MODELS,
    ModelSpec,
    UnknownModelError,
    check_model_fits,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelSpec",
    "UnknownModelError",
    "check_model_fits",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
