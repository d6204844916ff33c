"""The latency model on the real local cloud: an Invoke's modeled time passes before its handler runs, with
moto's own transit inside it. The start time the model sends with the request must reach the function through
botocore, the HTTP server and moto."""

import time

from localcloud import cloud as local_cloud
from localcloud import latency


def test_connects_invoke_runs_the_handler_once_its_modeled_time_has_passed(cloud, monkeypatch):
    # Given a handler whose start is recorded, and a model where an invoke takes 60 ms (and a cold start nothing)
    started = []
    real_call = local_cloud.LocalFunction.call

    def call(self, event):
        started.append(time.perf_counter())
        return real_call(self, event)

    monkeypatch.setattr(local_cloud.LocalFunction, "call", call)
    model = latency.LatencyModel(lambda_invoke_ms=60, lambda_cold_ms=0)
    with latency.install(model, cloud=cloud) as installed:
        # When Connect invokes ConnectFunction (with a request it refuses: the handler's work does not matter)
        sent = time.perf_counter()
        cloud.invoke("ConnectFunction", {"Details": {"Parameters": {"Operation": "no_such_operation"}}})

    # Then the handler started no sooner than 60 ms after the invoke, and the model slept less than that for it:
    # moto's transit counted inside the 60 ms, and nothing was added after the handler had run
    assert (started[0] - sent) * 1000 >= 60
    assert 0 < installed.slept_ms["lambda.Invoke"] < 60
    assert installed.requests["lambda.Invoke"] == 1
