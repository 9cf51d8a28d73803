"""The hand-written Prometheus text against the exposition format, written out by hand for known updates."""
from dgsnet_export.serve.metrics import Metrics


def test_render_is_the_exposition_format():
    waiting = [3]
    metrics = Metrics(queue_depth=lambda: waiting[0])
    metrics.requests.inc(route="/v1/detect", method="POST", status="200")
    metrics.requests.inc(route="/v1/detect", method="POST", status="200")
    metrics.errors.inc(kind='odd "kind"\\')
    for seconds in (0.004, 0.3, 20.0):
        metrics.latency.observe(seconds)
    metrics.batch_size.observe(3)
    text = metrics.render()
    lines = text.splitlines()
    assert text.endswith("\n")
    assert 'dgsnet_requests_total{method="POST",route="/v1/detect",status="200"} 2' in lines
    assert 'dgsnet_errors_total{kind="odd \\"kind\\"\\\\"} 1' in lines
    assert "# TYPE dgsnet_request_duration_seconds histogram" in lines
    buckets = [line for line in lines if line.startswith("dgsnet_request_duration_seconds_bucket")]
    assert buckets[0] == 'dgsnet_request_duration_seconds_bucket{le="0.005"} 1'  # cumulative counts
    assert 'dgsnet_request_duration_seconds_bucket{le="0.5"} 2' in buckets
    assert buckets[-1] == 'dgsnet_request_duration_seconds_bucket{le="+Inf"} 3'
    assert "dgsnet_request_duration_seconds_count 3" in lines
    assert 'dgsnet_batch_size_bucket{le="2"} 0' in lines and 'dgsnet_batch_size_bucket{le="4"} 1' in lines
    assert "dgsnet_queue_depth 3" in lines
    waiting[0] = 0
    assert "dgsnet_queue_depth 0" in metrics.render().splitlines()


def test_admission_gauges_follow_the_reservations():
    from dgsnet_export.serve.admission import Admission

    account = Admission(max_images=3, max_pixels=1000)
    metrics = Metrics(admission=account)
    first = account.try_reserve([400, 500])
    assert first is not None and account.try_reserve([200]) is None  # 1100 pixels would pass the bound
    assert account.try_reserve([50, 50]) is None  # 4 images would pass the bound
    lines = metrics.render().splitlines()
    assert "dgsnet_decoded_images 2" in lines and "dgsnet_decoded_pixels 900" in lines
    assert "dgsnet_decoded_pixels_limit 1000" in lines
    first.release()
    first.release()  # once only
    second = account.try_reserve([1000])
    assert second is not None
    second.release()
    lines = metrics.render().splitlines()
    assert "dgsnet_decoded_images 0" in lines and "dgsnet_decoded_pixels 0" in lines
    assert "dgsnet_decoded_pixels_peak 1000" in lines
    assert account.try_reserve([]) is not None  # a request of only unreadable files holds nothing
