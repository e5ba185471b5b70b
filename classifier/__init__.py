"""The runtime: preprocessing, the ONNX model and the page; no TensorFlow."""

from classifier.model import Classifier, ModelError, Prediction
from classifier.preprocess import ImageError, ImageTooLargeError

__all__ = ["Classifier", "ImageError", "ImageTooLargeError", "ModelError", "Prediction"]
