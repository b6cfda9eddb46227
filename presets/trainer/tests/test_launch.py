import os
import sys
import unittest

from kaitoflow_trainer import launch

# A worker stand-in: exits with the code its rank is given in WORKER_CODES, after writing a reason
# to its termination log; rank "hang" never exits until it is stopped.
WORKER = r"""
import os, sys, time
rank = int(os.environ["RANK"])
code = os.environ["WORKER_CODES"].split(",")[rank]
for key in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    assert os.environ[key], key
if code == "hang":
    time.sleep(60)
delay = float(os.environ.get("WORKER_DELAY_%d" % rank, "0"))
time.sleep(delay)
if code != "0":
    with open(os.environ["KAITOFLOW_TERMINATION_LOG"], "w") as f:
        f.write("rank %d failed with %s" % (rank, code))
sys.exit(int(code))
"""


def run(codes, **delays):
    env = dict(os.environ, WORKER_CODES=",".join(codes))
    for rank, seconds in delays.items():
        env["WORKER_DELAY_{}".format(rank.lstrip("r"))] = str(seconds)
    return launch.run([sys.executable, "-c", WORKER], len(codes), env=env, poll_seconds=0.05, grace_seconds=2)


class LaunchTest(unittest.TestCase):
    def test_all_succeed(self):
        self.assertEqual(run(["0", "0", "0"]), (0, ""))

    def test_a_classified_failure_wins_over_the_collective_errors_it_causes(self):
        # Rank 2 runs out of memory (4); ranks 0 and 1 then fail on the broken collective (1), and
        # rank 0 may well be seen first.
        code, reason = run(["1", "1", "4"], r2=0.3)
        self.assertEqual((code, reason), (4, "rank 2 failed with 4"))

    def test_the_others_are_stopped(self):
        code, reason = run(["hang", "3"])
        self.assertEqual((code, reason), (3, "rank 1 failed with 3"))

    def test_sigterm_reaches_the_workers(self):
        # The launcher forwards the pod's SIGTERM; the workers' exits (a signal, 128+15) decide.
        import signal
        import threading

        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            code, _ = run(["hang", "hang"])
        finally:
            timer.cancel()
        self.assertEqual(code, 128 + signal.SIGTERM)

    def test_telling(self):
        self.assertEqual(launch.telling([None, 1, 5]), 2)
        self.assertEqual(launch.telling([1, 1, None]), 0)
        self.assertEqual(launch.telling([0, -9, 1]), 1)
        self.assertIsNone(launch.telling([0, None]))


if __name__ == "__main__":
    unittest.main()
