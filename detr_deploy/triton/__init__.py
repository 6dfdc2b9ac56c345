"""Serving with NVIDIA Triton Inference Server: a model repository writer, the Python-backend models it uses, a
local server for tests and users, and a client."""
