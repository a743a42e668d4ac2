"""Load test of the stream service against a bare-consumer ceiling and a naive Faust + river
pipeline, on the same generated data and the real broker (``python -m loadtest run --help``)."""
