#!/usr/bin/env python3
"""ncu_step.py on a real ncu CSV (bench/gpu/testdata/ncu_b64_h200.csv: 290 launches of a batch-64
decode run on the H200, 2026-11-28, trimmed from the one in bench/RESULTS.md run H), and on the
cases it must refuse."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ncu_step  # noqa: E402

FIXTURE = os.path.join(HERE, "testdata", "ncu_b64_h200.csv")


def fixture_lines():
    with open(FIXTURE) as f:
        return f.read().splitlines(True)


class NcuStepTest(unittest.TestCase):
    def test_last_whole_step_of_the_h200_run(self):
        launches = ncu_step.read_launches(FIXTURE)
        self.assertEqual(len(launches), 290)
        step = ncu_step.last_step(launches, "EmbedKernel")
        self.assertEqual(len(step), 139)
        self.assertIn("EmbedKernel", step[0][0])
        self.assertAlmostEqual(sum(us for _, _, us in step), 1055.9, delta=0.1)
        groups = dict(ncu_step.group(step))
        n, us, grid = groups["AttentionStagedKernel<64, 4, 2, 64>"]
        self.assertEqual((n, grid), (12, "(64, 4, 2)"))  # one per transformer block
        self.assertAlmostEqual(us / n, 18.39, delta=0.01)
        self.assertEqual(groups["RmsNormKernel"][0], 25)  # 2 per block + the final norm
        self.assertEqual(groups["MemoryTopMKernel"][0], 4)  # one per memory layer
        self.assertEqual(ncu_step.group(step)[0][0], "AttentionStagedKernel<64, 4, 2, 64>")

    def test_refuses_a_csv_without_a_whole_step(self):
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            lines = fixture_lines()
            f.write(lines[0])
            f.writelines(lines[1:40])  # no embedding launch at all
            path = f.name
        try:
            self.assertIsNone(ncu_step.last_step(ncu_step.read_launches(path), "EmbedKernel"))
            r = subprocess.run([sys.executable, os.path.join(HERE, "ncu_step.py"), path],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("no whole step", r.stderr)
        finally:
            os.unlink(path)

    def test_refuses_an_unknown_unit(self):
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            lines = fixture_lines()
            f.write(lines[0])
            f.write(lines[1].replace('"ns"', '"furlong"'))
            path = f.name
        try:
            with self.assertRaises(SystemExit):
                ncu_step.read_launches(path)
        finally:
            os.unlink(path)


if __name__ == "__main__":
    unittest.main()
