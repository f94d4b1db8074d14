"""Thread counts follow a container's CPU quota (cgroup v2 and v1), not only the host's cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqserve import cpu


def fake_v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text + "\n")
    return root


def fake_v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: fake_v2(root, "max 100000"), None),
    (lambda root: fake_v2(root, "150000 100000"), 1.5),
    (lambda root: fake_v1(root, "-1", "100000"), None),
    (lambda root: fake_v1(root, "50000", "100000"), 0.5),
    (lambda root: root, None),  # no cgroup files at all
])
def test_cgroup_quota_is_read_from_v2_and_v1(tmp_path, make, expected):
    assert cpu.cgroup_cpu_quota(make(tmp_path)) == expected


def test_cores_never_exceed_the_quota(tmp_path):
    root = fake_v2(tmp_path, "50000 100000")
    assert cpu.physical_cores(root) == 1  # half a CPU of quota still runs one thread
    (root / "cpu.max").write_text("max 100000\n")
    assert cpu.physical_cores(root) == cpu.physical_cores(tmp_path / "no-cgroup") >= 1
