"""What a worker may use before the OOM killer strikes: its cgroup's limit (v1 or v2, in a container
or on a host), else the host's memory, unless HTL_WORKER_MEMORY_BYTES says."""

from __future__ import annotations

import mmap

from worker import memory


def _tree(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)


def test_a_v2_cgroup_limit_is_read_and_max_means_none(tmp_path):
    _tree(
        tmp_path,
        {
            "proc": "0::/system.slice/htl.service\n",
            "cg/system.slice/htl.service/memory.max": "8589934592\n",
            "cg/memory.max": "max\n",
        },
    )
    assert memory._cgroup_limits(tmp_path / "cg", tmp_path / "proc") == [8 * 2**30]
    _tree(tmp_path, {"cg/system.slice/htl.service/memory.max": "max\n"})
    assert memory._cgroup_limits(tmp_path / "cg", tmp_path / "proc") == []


def test_a_v1_container_limit_is_read_and_the_unlimited_value_ignored(tmp_path):
    _tree(
        tmp_path,
        {"proc": "4:memory:/docker/abc\n3:cpuset:/\n0::/\n", "cg/memory/memory.limit_in_bytes": "4294967296\n"},
    )  # a container sees its own cgroup at the root
    assert memory._cgroup_limits(tmp_path / "cg", tmp_path / "proc") == [4 * 2**30]
    _tree(tmp_path, {"cg/memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert memory._cgroup_limits(tmp_path / "cg", tmp_path / "proc") == []


def test_the_configured_limit_wins_and_the_reading_is_this_process(monkeypatch):
    assert memory.usable_bytes(123) == 123
    monkeypatch.setattr(memory, "_cgroup_limits", lambda: [2**30])
    assert memory.usable_bytes() == min(2**30, memory.host_memory_bytes() or 2**30)
    before = memory.resident_bytes()
    # fresh pages from the kernel: a bytearray may reuse memory the allocator freed but kept resident
    # (after a test that peaked high, RSS then does not move at all)
    block = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(block), 4096):  # touch every page
        block[offset] = 1
    assert memory.resident_bytes() - before >= 60 * 2**20
    block.close()
