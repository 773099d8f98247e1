"""The on-device runtime: numpy, tokenizers, sqlite; onnxruntime or tensorrt. Never torch or transformers
(the torch reference backend is imported only when chosen)."""
