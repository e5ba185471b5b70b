"""The runtime: preprocessing, the ONNX model and the page; never TensorFlow.

The API is ``classifier.model.Classifier``; this package imports nothing
itself, so the converter can read ``classifier.metadata`` without loading
onnxruntime.
"""
