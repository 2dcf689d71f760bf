"""The suite runs on two pytest-xdist workers sharing two cores, so each worker runs torch on one thread
(tests/conftest.py). Every worker imports every test module before it runs a test, so one module that sets its own
thread count sets it for all of them, and two threads a worker on two cores slow every in-process test."""

import torch


def test_no_test_module_changes_the_thread_count():
    assert torch.get_num_threads() == 1
