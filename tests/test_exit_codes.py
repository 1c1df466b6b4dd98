"""One exit code per failure class (vitedge.errors), through the CLI's error handler."""
from __future__ import annotations

import click
import numpy as np
import pytest
from click.testing import CliRunner

from vitedge.cli.main import BUG_EXIT, _handle_errors
from vitedge.devices import ConnectionLostError, RuntimeMissingError
from vitedge.errors import BadInput, DeviceFailure, ExportValidationError, MissingExtra
from vitedge.exporters.onnx import OpAuditError
from vitedge.exporters.validation import ParityError
from vitedge.pipeline import BudgetNotMetError
from vitedge.profiling import PartsFailedError


def _run(exc):
    @click.command()
    @_handle_errors
    def cmd():
        raise exc
    return CliRunner().invoke(cmd, [])


def test_a_plain_value_error_from_a_vitedge_check_is_bad_input():
    from vitedge.search.planner import Planner

    @click.command()
    @_handle_errors
    def cmd():
        Planner(None, cost_model="joules")
    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == ["error: unknown cost model 'joules': use one of latency, flops"]


@pytest.mark.parametrize("exc, code", [
    (BadInput("no such model: pick another"), 2),
    (BudgetNotMetError("measured 3 ms > budget 2 ms"), 1),
    (MissingExtra("litert-torch is not installed: pip install vitedge[tflite]"), 3),
    (RuntimeMissingError("onnxruntime is not installed"), 3),
    (DeviceFailure("lost the connection to pi@10.0.0.2"), 4),
    (ConnectionLostError("ssh to pi@10.0.0.2 was killed (signal 9) while profiling"), 4),
    (ExportValidationError("ONNX and PyTorch disagree"), 5),
    (ParityError("kept tokens differ"), 5),
    (OpAuditError("model.onnx holds TopK: edge runtimes reject it"), 5),
    (PartsFailedError("3 of 259 parts failed on rpi4 (pi@10.0.0.2), e.g. attention_n64: segfault"), 4),
])
def test_each_failure_class_has_its_exit_code(exc, code):
    r = _run(exc)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert r.stderr.strip().splitlines() == [f"error: {exc}"]              # one line, no traceback
    assert isinstance(exc, ValueError) == (code in (2, 4))                  # bad input and devices stay ValueError


def test_an_internal_error_is_a_bug_with_traceback():
    def numpy_fails():
        return np.zeros(3).reshape(2, 2)                                     # ValueError raised inside numpy
    @click.command()
    @_handle_errors
    def cmd():
        numpy_fails()
    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == BUG_EXIT, r.output
    assert "Traceback" in r.stderr and "reshape" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: internal error (ValueError): this is a bug in vitedge")
    assert _run(KeyError("x")).exit_code == BUG_EXIT
