"""Offline conversion of Keras image classifiers to ONNX; needs TensorFlow (dev only)."""
