"""Worker mode: run any job in its own process, started from a saved job file.

Why a separate process: host apps (A1111 1.10 pins transformers 4.30 and accelerate
0.21) cannot import the libraries we need. A worker runs on the host's Python and
torch, with our other dependencies taken first from a private folder, so nothing of
the host is replaced or imported twice.

- runner.py       run_job(): one entry point for train, class images and generate.
- protocol.py     the wire format: one JSON event per stdout line, exit codes, stop file.
- worker.py       the worker process (`python -m sksbooth.jobs.worker JOB_FILE`).
- stream.py       the worker's stdout: JSON lines only, all other output sent to stderr.
- bootstrap.py    how the worker finds `sksbooth` when it is not pip-installed.
- environment.py  the worker's PYTHONPATH, and the report of where its libraries came from.
- client.py       start_worker() / WorkerHandle: the host side, used by the adapters.

Nothing is imported here, so importing the client never pulls in torch.
"""
