"""The simulated API: deterministic labels, a price, send times on record, checked options."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import robust_api
from robust_api.errors import InvalidParameterError
from robust_api.providers.simulated import SimulatedProvider, read_send_times


def blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.random((2, 2, 3)), np.ones((8, 8, 1))).astype(np.float32)


def test_labels_are_deterministic_across_instances_and_seeds_change_them():
    images = np.stack([blocks(i) for i in range(20)])
    first, second = SimulatedProvider(latency_s=0), SimulatedProvider(latency_s=0)
    labels = [first.parse(raw) for raw in first.send(images)]
    assert labels == [second.parse(raw) for raw in second.send(images)]
    assert len(set(labels)) >= 4  # the images spread over the classes
    other = SimulatedProvider(latency_s=0, seed=1)
    assert labels != [other.parse(raw) for raw in other.send(images)]
    gray = SimulatedProvider(latency_s=0, classes=3).send(images[:2, :, :, :1])
    assert all(raw["label"] in {"class-0", "class-1", "class-2"} for raw in gray)


def test_it_certifies_through_the_sdk_and_bills_its_price(tmp_path):
    record = tmp_path / "requests"
    record.mkdir()
    api = robust_api.RobustAPI("simulated", latency_s=0, log=False, seed=0, record_dir=str(record))
    cert = api.certify(blocks(1), noise_sd=0.25, N0=10, N=50, alpha=0.001)
    assert not cert.abstained and cert.radius > 0
    assert api.spent.queries == 60 and api.spent.cost_usd == pytest.approx(60 * 0.0015)
    times = read_send_times(str(record))
    assert len(times) == 60 and np.all(np.diff(times) >= 0)


@pytest.mark.parametrize("options, message", [
    ({"latency_s": -1}, "latency_s"), ({"busy_s": 61}, "busy_s"), ({"classes": 1}, "classes"),
    ({"rate_limit": 0}, "rate_limit"), ({"exit_after": 3}, "exit_marker"), ({"batch_size": 0}, "batch_size"),
    ({"cost_per_query_usd": -1.0}, "cost_per_query_usd"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidParameterError, match=message):
        SimulatedProvider(**options)


def test_exit_after_ends_only_the_first_process_to_get_there(tmp_path):
    marker = tmp_path / "crashed"
    script = (
        "import numpy as np, sys\n"
        "from robust_api.providers.simulated import SimulatedProvider\n"
        f"p = SimulatedProvider(latency_s=0, exit_after=3, exit_marker={str(marker)!r})\n"
        "for _ in range(5): p.send(np.zeros((1, 4, 4, 3), np.float32))\n"
        "print('survived')\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.returncode == 75 and marker.exists() and "survived" not in first.stdout
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert second.returncode == 0 and "survived" in second.stdout
    assert os.path.getsize(marker) == 0
