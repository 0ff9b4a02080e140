"""Fault: bad requests to ``mlflow models serve`` of the registered champion (malformed JSON, wrong shapes and
dtypes, an oversized image, a wrong content type) and 32 concurrent requests: 4xx answers with a message for the
bad ones, the server stays up; p50/p99 latency and the server's peak memory are printed."""
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import numpy as np
import psutil
import pytest
import torch

from conftest import use_store
from maskdcpt.models import build_nafnet
from pipelines.services import start_model_server

pytestmark = pytest.mark.slow

NAME = "serve-fault-test"
MAX_PIXELS = 48 * 48


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from maskdcpt.serving import log_pyfunc_model

    tmp = tmp_path_factory.mktemp("serve")
    uri = use_store(tmp / "mlflow.db", "serve-test")
    torch.manual_seed(0)
    net = build_nafnet("tiny")
    sd = net.state_dict()
    ckpt = tmp / "model.pt"
    torch.save({"params": sd, "params_ema": sd, "meta": {"arch": "nafnet", "preset": "tiny"}}, ckpt)
    log_pyfunc_model(ckpt, registered_model_name=NAME, max_pixels=MAX_PIXELS)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    mlflow.set_tracking_uri(None)
    svc = start_model_server(f"models:/{NAME}@champion", tracking_uri=uri, log_dir=tmp)
    yield svc
    svc.stop()


def _post(server, body, content_type="application/json", timeout=60.0):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}/invocations", content=data, headers={"Content-Type": content_type},
                      timeout=timeout)


def _image(h, w, n=1, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


@pytest.mark.fault(fault="bad request", where="mlflow models serve (champion)",
                   outcome="clear failure: HTTP 4xx with a message, server stays up")
@pytest.mark.parametrize("case", ["malformed-json", "not-an-image", "wrong-rank", "wrong-channels", "strings",
                                  "oversized", "wrong-content-type", "empty"])
def test_bad_requests_get_4xx_with_a_message_and_the_server_stays_up(server, case, record_property):
    img = _image(16, 16).tolist()
    body, ctype = {
        "malformed-json": ('{"inputs": [[[0.1, 0.2', "application/json"),
        "not-an-image": ({"inputs": "hello"}, "application/json"),
        "wrong-rank": ({"inputs": [[0.1, 0.2, 0.3]]}, "application/json"),
        "wrong-channels": ({"inputs": _image(8, 8)[..., :2].tolist()}, "application/json"),
        "strings": ({"inputs": [[[["a", "b", "c"]]]]}, "application/json"),
        "oversized": ({"inputs": _image(64, 64).tolist()}, "application/json"),
        "wrong-content-type": (json.dumps({"inputs": img}), "text/plain"),
        "empty": (b"", "application/json"),
    }[case]
    r = _post(server, body, ctype)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    record_property("measured", f"HTTP {r.status_code}")
    assert r.text.strip(), "a bad request deserves a message"
    if case == "oversized":
        assert "max_pixels" in r.text
    assert httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
    ok = _post(server, {"inputs": img})
    assert ok.status_code == 200 and np.asarray(ok.json()["predictions"]).shape == (1, 16, 16, 3)


@pytest.mark.fault(fault="32 concurrent requests", where="mlflow models serve (champion)",
                   outcome="recovered: all answered, server stays up")
def test_32_concurrent_requests_all_answered(server, record_property):
    proc = psutil.Process(server.pid)
    peak = {"rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(i):
        t0 = time.perf_counter()
        r = _post(server, {"inputs": _image(32, 32, seed=i).tolist()}, timeout=300.0)
        return r.status_code, np.asarray(r.json()["predictions"]).shape, time.perf_counter() - t0

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    stop.set()
    sampler.join()
    assert all(code == 200 and shape == (1, 32, 32, 3) for code, shape, _ in results), results
    lat = sorted(t for _, _, t in results)
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    record_property("measured", f"32x32 px: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, server peak RSS "
                                f"{peak['rss'] / 2**20:.0f} MiB")
    assert httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
