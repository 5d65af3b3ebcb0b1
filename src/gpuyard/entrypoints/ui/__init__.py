"""The web UI (Streamlit): sign in, submit, queue, running jobs, GPUs, history, dead letters.

It talks to the API only, through gpuyard.client. Page logic lives in plain functions (views, listings,
cards, dead_letters, forms, series) that take client results and return rows and sentences; the page
scripts under screens/ only lay them out. `gpuyard ui` starts it alone; `gpuyard up` starts it beside the
controller and the worker.
"""
