# The ftx.backends.mindformers.worker module as a script, for msrun.
import runpy

runpy.run_module("ftx.backends.mindformers.worker", run_name="__main__")
