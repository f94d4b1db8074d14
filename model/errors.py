"""Errors the training and export tools raise; each message names the offending field or file."""


class SeqserveModelError(Exception):
    """Base class of every error the model/training/export tools raise on bad input."""


class ConfigError(SeqserveModelError, ValueError):
    """An encoder configuration value is out of its domain."""


class CheckpointError(SeqserveModelError):
    """A checkpoint is missing, unreadable or inconsistent with its config."""


class InputShapeError(SeqserveModelError, ValueError):
    """A batch does not have the shape or feature count the model expects."""


class ParityError(SeqserveModelError):
    """The exported ONNX model disagrees with the PyTorch module beyond tolerance."""


class AccuracyDropError(SeqserveModelError):
    """A quantized model loses more test accuracy than the limit allows."""
