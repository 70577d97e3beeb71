"""Every use of kafka-python internals, in one place.

Checking a new kafka-python release means reading this package and running tests/unit/test_kafka_compat.py, which
fails when a release moves or changes what a workaround relies on.
"""
