"""Send traces to an otel-tail-sampler with the OpenTelemetry Python SDK.

Usage: send_traces.py <transport: http|grpc> <endpoint> <traces>

An https:// endpoint is reached over TLS; the SDK's own variables configure it
(OTEL_EXPORTER_OTLP_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
OTEL_EXPORTER_OTLP_CLIENT_KEY), as do OTEL_EXPORTER_OTLP_HEADERS for tokens.

Every even-numbered trace has a child span with status ERROR. Prints one JSON
object: {"error": [trace ids], "ok": [trace ids]} (32-digit lower-case hex).
"""

import json
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporter(transport, endpoint):
    if transport == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    if endpoint.startswith("https://"):
        return OTLPSpanExporter(endpoint=endpoint[len("https://"):], insecure=False)
    return OTLPSpanExporter(endpoint=endpoint, insecure=True)


def main():
    transport, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    provider = TracerProvider(resource=Resource.create({"service.name": "py-shop"}))
    provider.add_span_processor(BatchSpanProcessor(exporter(transport, endpoint)))
    tracer = provider.get_tracer("otel-tail-it")
    result = {"error": [], "ok": []}
    for i in range(count):
        failing = i % 2 == 0
        with tracer.start_as_current_span("GET /api/py", kind=SpanKind.SERVER) as root:
            root.set_attribute("http.route", "/api/py")
            with tracer.start_as_current_span("query") as child:
                if failing:
                    child.set_status(Status(StatusCode.ERROR, "query failed"))
            trace_id = format(root.get_span_context().trace_id, "032x")
        result["error" if failing else "ok"].append(trace_id)
    if not provider.force_flush(30_000):
        sys.exit("flush failed")
    provider.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
