# The ftx.backends.mindformers.worker module as a script, for msrun.
import sys

from ftx.core.worker.entry import run_worker
from ftx.backends.mindformers.worker import main

sys.exit(run_worker(main))
