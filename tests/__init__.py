"""Tests of the cxr pipeline: unit tests per module, end-to-end workflow runs (marker e2e)."""
