"""The receiving side: ``migrator scp``, a Storage SCP that files what it receives.

``server`` (associations, C-STORE/C-ECHO handling on pynetdicom), ``storage`` (path-safe,
atomic writes), ``faults`` (fault injection for tests), ``stats`` (counters and log lines).
"""
