"""What a trace *is*: schema v1, reading and writing, validation, synthetic
workloads and importers.  Imports nothing from the other permtrace packages."""

from traces.errors import PermtraceError, TraceError
from traces.io import (
    iter_event_batches,
    num_events,
    read_metadata,
    read_trace,
    scan_trace,
    write_trace,
)
from traces.schema import OP_CODE, OPS, SCHEMA, SCHEMA_VERSION
from traces.validate import Problem, validate_trace

__all__ = [
    "OPS", "OP_CODE", "SCHEMA", "SCHEMA_VERSION",
    "PermtraceError", "TraceError",
    "iter_event_batches", "num_events", "read_metadata", "read_trace", "scan_trace", "write_trace",
    "Problem", "validate_trace",
]
