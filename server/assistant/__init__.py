"""The live-commerce assistant: a room participant that answers product questions from a catalogue.

Pure core (catalogue, text, intent, retrieval, phrasing, core) apart from the I/O edges
(runner: the WebSocket; llm: the optional chat-completions call).
"""
