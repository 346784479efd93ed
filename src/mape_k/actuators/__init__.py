"""Actuators: what carries out an action. One interface (`base.Actuator`), four kinds:
the Charter (the nine built-in actions, `charter.py`), `exec` (a program, `exec.py`),
`http` (a webhook, `http.py`) and `alertmanager` (silences and alerts,
`alertmanager.py`). User-defined actions are rendered through the strict templates of
`template.py`; nothing here imports the configuration at package import.
"""
