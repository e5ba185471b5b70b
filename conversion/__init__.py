"""Offline conversion of Keras InceptionV3 to ONNX; needs TensorFlow (dev only)."""
