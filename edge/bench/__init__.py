"""``edge-seg bench``: latency, memory and accuracy of models side by side (runner), the limit
conv a CPU reaches (roofline), charts, and the ONNX Runtime peer of a .tflite (onnx_peer)."""
