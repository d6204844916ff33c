"""Lambda handler invoked by the Amazon Connect contact flow (InvokeLambdaFunction block).

Actions (Details.Parameters.Action): start_stream, get_next_batch, chat_and_stream, stop. The reply is always a
flat string map; see tts_stream/streams.py for its keys and README for the contract.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from tts_stream import config, streams

logger = Logger()
# No Powertools Tracer here: importing the X-Ray SDK (and patching botocore) is ~140 ms of this function's
# ~330 ms cold import, and a cold start here is time a caller hears nothing. Lambda's active tracing still
# records every invocation (init and duration); the workflow's functions trace their AWS calls in detail.
metrics = Metrics()  # namespace from POWERTOOLS_METRICS_NAMESPACE (template Globals)
_clients = None


def _aws() -> streams.Clients:
    """Clients are made on first use, not at import: a cold start pays only for what it calls."""
    global _clients
    if _clients is None:
        _clients = streams.aws_clients()
    return _clients


@logger.inject_lambda_context(correlation_id_path="Details.ContactData.ContactId", clear_state=True)
@metrics.log_metrics
def handler(event, context):
    result = streams.handle(_aws(), config.load(), event, remaining_ms=context.get_remaining_time_in_millis())
    logger.append_keys(stream_id=result["StreamId"])  # with the contact id: both correlation ids on every line
    count = int(result["Count"])
    metrics.add_metric("BatchesServed", MetricUnit.Count, 1)
    metrics.add_metric("PartsServed", MetricUnit.Count, count)
    if count == 0 and result["Final"] == "false":
        metrics.add_metric("EmptyBatches", MetricUnit.Count, 1)
    if result["Final"] == "true":
        metrics.add_metric("Finals", MetricUnit.Count, 1)
    logger.info("batch", stream_id=result["StreamId"], status=result["Status"], count=count,
                next_index=result["NextIndex"], final=result["Final"], error=result["Error"])
    return result
