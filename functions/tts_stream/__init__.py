"""Plain logic of connect-tts-stream: chunking, audio, engines, manifest and batches.

Nothing here knows about Lambda events; the handlers in functions/*.py adapt events to these functions.
"""
