# The ftx.backends.paddle.worker module as a script, for paddle.distributed.launch.
import runpy

runpy.run_module("ftx.backends.paddle.worker", run_name="__main__")
