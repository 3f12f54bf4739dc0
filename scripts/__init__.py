"""Helper scripts (shell and Python). A package so that ``python -m scripts.<name>`` runs this checkout's
code and the test harness can import ``scripts.comfy_demo.stop_server``; each script still runs by path.
"""
