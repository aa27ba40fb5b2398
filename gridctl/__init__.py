"""gridctl: keep GPU workloads alive on fleets of GPU machines.

Importing this package is cheap: no cloud SDK, no paramiko. Heavy modules are imported by the
commands that need them.
"""

__version__ = "0.1.0"
