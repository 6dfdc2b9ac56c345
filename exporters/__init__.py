"""Turning zoo models into deployable files: ONNX export and its graph passes (TensorRT building comes later)."""
