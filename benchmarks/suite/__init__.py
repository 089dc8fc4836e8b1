"""The parts of ``python -m benchmarks.device_suite``: :mod:`~benchmarks.suite.plans` (sizes),
:mod:`~benchmarks.suite.runtime` (budget, compilation clock, the report in progress),
:mod:`~benchmarks.suite.report` (JSON and Markdown files), :mod:`~benchmarks.suite.sections`
(the timing sections) and :mod:`~benchmarks.suite.study` (the study section)."""
