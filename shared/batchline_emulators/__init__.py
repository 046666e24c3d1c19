"""Faithful local emulators of three providers' batch APIs (OpenAI Batch, Anthropic
Message Batches, Vertex AI batch prediction), served over HTTP so that the official SDKs
talk to them unchanged. They say no the way the providers do (limits, 429s, odd orders,
partial results), and tests steer them through `/_emulator/...` endpoints. A package of
its own: usable by anyone's tests, never imported by batchline's functions."""
