"""Triton python backend: serve this version's model.onnx with onnxruntime (see encoders)."""

from semirec.encoders.triton_onnx import TritonPythonModel  # noqa: F401
