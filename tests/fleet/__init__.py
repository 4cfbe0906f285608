"""A fleet of hosts on one machine, in Linux network namespaces (issue 22): Redis, a PACS,
worker hosts and a planner, each with its own address; links cut, hosts lost, partitions.

Root only (``ip netns``). Used by ``tests/test_fleet.py``; reusable by ``bench/``.
"""

from tests.fleet.fleet import Fleet, Host
from tests.fleet.pacslog import PacsLog

__all__ = ["Fleet", "Host", "PacsLog"]
