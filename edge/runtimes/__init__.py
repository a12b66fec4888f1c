"""The interpreters a model runs on (LiteRT, tflite-runtime, ONNX Runtime for the bench's peer),
the CPU's kernels and their choice (kernels), and a model file's description (info)."""
