"""kernels.cpu.openmp: a thread's idle OpenMP team ends when it hands it back, and a TeamlessExecutor's threads
keep none between jobs; the serving path relies on both (the engine's team is then the only one)."""

import os
import threading

import pytest
import torch

from kernels.cpu.openmp import TeamlessExecutor, _runtime, release_team

pytestmark = pytest.mark.skipif(_runtime() is None, reason="no libgomp with omp_pause_resource_all")


def tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def parallel_work() -> torch.Tensor:
    a = torch.arange(1 << 20, dtype=torch.float32).reshape(1024, 1024) / (1 << 20)  # above every parallel grain
    return (a @ a).exp().sum(dim=1)  # MKL's GEMM and torch's own loops


def new_team(fn) -> set[int]:
    """The threads fn's parallel regions started (the calling thread's team, when it had none)."""
    before = tids()
    fn()
    return tids() - before


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_release_team_ends_the_callers_idle_team_only():
    release_team()
    mine = new_team(parallel_work)  # this thread's team, which the other thread's release must leave alone
    out = {}

    def run():
        team = new_team(parallel_work)
        out["released"] = release_team()
        out["left"] = team & tids()
        out["again"] = new_team(parallel_work)  # a later region starts a new team
        out["team"] = team

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(mine) == 1 and len(out["team"]) == 1 and len(out["again"]) == 1
    assert out["released"] and not out["left"] and mine <= tids()


def test_teamless_executor_threads_hold_no_team_between_jobs():
    expected = parallel_work()
    release_team()
    before = tids()

    def job():
        return parallel_work(), threading.get_native_id()

    with TeamlessExecutor(max_workers=1) as pool:
        got, worker = pool.submit(job).result()
        assert tids() - before == {worker}  # its worker, and no team beside it
        assert pool.submit(lambda: 7).result() == 7
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
