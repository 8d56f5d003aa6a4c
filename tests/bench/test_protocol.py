"""The JSON-line protocol: what counts as a report, and every way a report can be wrong."""

from __future__ import annotations

import json

import pytest

from migctl.bench.protocol import ProtocolError, parse_line, parse_output
from migctl.bench.runner import measure


def test_a_good_line_and_defaults():
    r = parse_line('{"throughput": 12.5, "latency_ms": 3, "unit": "tokens/s", "gpu_util": 0.9}')
    assert (r.throughput, r.latency_ms, r.unit, r.extra) == (12.5, 3.0, "tokens/s", {"gpu_util": 0.9})
    assert parse_line('{"throughput": 1, "latency_ms": 2}').unit == "items/s"


@pytest.mark.parametrize("line", ["", "loading model...", "{not json at all", '{"step": 3, "loss": 0.1}', "[1, 2]",
                                  '  {"epoch": 1}  '])
def test_other_output_is_not_a_report(line):
    assert parse_line(line) is None


@pytest.mark.parametrize("line,why", [
    ('{"throughput": 10}', "missing field(s) latency_ms"),
    ('{"latency_ms": 10}', "missing field(s) throughput"),
    ('{"throughput": "fast", "latency_ms": 1}', "throughput must be a number"),
    ('{"throughput": true, "latency_ms": 1}', "throughput must be a number"),
    ('{"throughput": -1, "latency_ms": 1}', "throughput must be a finite number >= 0"),
    ('{"throughput": NaN, "latency_ms": 1}', "finite"),
    ('{"throughput": 1, "latency_ms": 0}', "latency_ms must be a finite number > 0"),
    ('{"throughput": 1, "latency_ms": Infinity}', "latency_ms must be a finite"),
    ('{"throughput": 1, "latency_ms": 1, "unit": 5}', "unit must be a short printable string"),
    ('{"throughput": 1, "latency_ms": 1, "unit": "' + "x" * 40 + '"}', "at most 32"),
    ('{"throughput": 1, "latency_ms": 1,}', "not valid JSON"),
    ('{"throughput": 1 "latency_ms": 1}', "not valid JSON"),
])
def test_bad_reports_are_errors(line, why):
    with pytest.raises(ProtocolError, match=r".*" + why.replace("(", r"\(").replace(")", r"\)")):
        parse_line(line)


def test_output_last_report_wins_and_errors_name_the_line():
    text = "\n".join(["starting", json.dumps({"throughput": 1, "latency_ms": 9}), "more noise",
                      json.dumps({"throughput": 2, "latency_ms": 8})])
    assert parse_output(text).throughput == 2
    assert parse_output("no report here\n") is None
    with pytest.raises(ProtocolError, match=r"^stdout line 2: missing field\(s\) latency_ms"):
        parse_output('ok\n{"throughput": 3}\n{"throughput": 1, "latency_ms": 1}\n')


def test_a_deeply_nested_line_is_a_protocol_error_not_a_crash():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ProtocolError, match="nested too deeply"):
        parse_line('{"throughput": ' + deep + ', "latency_ms": 1}')
    assert parse_line('{"step": ' + deep + "}") is None  # not a report: other output, as any line
    with pytest.raises(ProtocolError, match="a number too long"):
        parse_line('{"throughput": 1' + "0" * 5000 + ', "latency_ms": 1}')


def _outcome(*per):
    return ("ok", 1.0, list(per))


def test_measure_turns_outcomes_into_results():
    good = json.dumps({"throughput": 10, "latency_ms": 5})
    r = measure("1g.10gb", 4, 2, 0, False, _outcome((0, good, "", 1.0), (0, good.replace("10", "20"), "", 1.0)), 9)
    assert (r.status, r.throughput, r.latency_ms, r.source) == ("ok", 15.0, 5.0, "protocol")
    r = measure("1g.10gb", 4, 1, 0, False, _outcome((3, "", "Traceback\nCUDA out of memory", 0.1)), 9)
    assert (r.status, r.error) == ("failed", "exit status 3: CUDA out of memory")
    r = measure("1g.10gb", 4, 1, 0, False, _outcome((0, '{"throughput": 1}', "", 0.1)), 9)
    assert r.status == "protocol" and "missing field(s) latency_ms" in r.error
    r = measure("1g.10gb", 4, 1, 0, False, _outcome((0, "done\n", "", 0.5)), 9)  # no report: wall time
    assert (r.status, r.source, r.throughput, r.latency_ms) == ("ok", "wall", 8.0, 500.0)
    r = measure("1g.10gb", 1, 2, 0, False, _outcome((0, good, "", 1.0), (0, "", "", 1.0)), 9)
    assert r.status == "protocol" and "some processes" in r.error
    r = measure("1g.10gb", 1, 1, 0, False, ("timeout", 9.0, [(137, "", "", 9.0)]), 9)
    assert r.status == "timeout" and "--timeout 9 s" in r.error
