"""Interop: weight conversion from other implementations, timm registration, ONNX export, fused inference."""
