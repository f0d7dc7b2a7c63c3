"""kernels.cpu.openmp: a thread's idle OpenMP team ends when it hands it back, and a TeamlessExecutor's threads
keep none between jobs; the serving path relies on both (the engine's team is then the only one)."""

import os
import threading

import pytest
import torch

from kernels.cpu.openmp import TeamlessExecutor, _runtime, release_team

pytestmark = pytest.mark.skipif(_runtime() is None, reason="no libgomp with omp_pause_resource_all")


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def parallel_work() -> torch.Tensor:
    a = torch.arange(1 << 20, dtype=torch.float32).reshape(1024, 1024) / (1 << 20)  # above every parallel grain
    return (a @ a).exp().sum(dim=1)  # MKL's GEMM and torch's own loops


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_release_team_ends_the_callers_idle_team_only():
    parallel_work()  # this thread's team, which the other thread's release must leave alone
    out = {}

    def run():
        base = threads()
        parallel_work()
        with_team = threads()
        released = release_team()
        after = threads()
        parallel_work()  # a later region starts a new team
        out["counts"] = base, with_team, released, after, threads()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    base, with_team, released, after, again = out["counts"]
    # after == base: the thread's own team gone, and this thread's team (counted in base) still there
    assert with_team == base + 1 and released and after == base and again == base + 1


def test_teamless_executor_threads_hold_no_team_between_jobs():
    expected = parallel_work()
    release_team()
    base = threads()
    with TeamlessExecutor(max_workers=1) as pool:
        got = pool.submit(parallel_work).result()
        assert threads() == base + 1  # its worker, and no team beside it
        assert pool.submit(lambda: 7).result() == 7
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
