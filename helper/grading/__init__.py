"""
The grading engine: a judge that never imports the submission, and a worker that does.

- protocol: plain data over a pipe (JSON and raw tensor bytes; never pickle)
- worker:   the process that imports a submission and runs what the judge asks
- probes:   the few operations of the checks that must run beside the module
- remote:   the judge's side: the worker process, its time limits and restarts,
            and proxies for the worker's objects
- sandbox:  bubblewrap around the worker (an unprivileged user, nothing but
            what the worker needs, limits on processes, memory and disk)
- results:  one result model (per check, per part, per submission) for the
            tests, the self-check and the batch grader
"""
