"""What tests and benchmarks share: photos, the app as a process, fuzzing, awkward
images, the converter in this process and the models the suite builds once.

Imported as ``tests.support.NAME`` from the repository root (pytest's
``pythonpath`` and ``python -m benchmarks.NAME`` both put it on ``sys.path``).
"""
