"""`vae-serve`: encode, decode, sample and score over HTTP (/v1 and the Open Inference Protocol v2) for every bundle
in a model repository, batched onto onnxruntime through runtime/. app.py builds the app, cli.py runs it under uvicorn;
README "Serving reference: `vae-serve`" documents it."""
