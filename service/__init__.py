"""The HTTP service (encode, decode, sample, score over onnxruntime). Not built yet: see README "Status"."""
