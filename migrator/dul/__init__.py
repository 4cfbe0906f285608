"""A lean DICOM Upper Layer (PS3.8) for the sending side.

Why our own: pynetdicom's reactor thread costs ~2 ms of CPU per C-STORE and races with
``send_c_store`` against fast peers (BENCHMARKS.md). A requestor that only sends C-STORE and
C-ECHO needs a small, synchronous subset of the protocol: associate, P-DATA, release, abort.
Here every byte is written by the calling thread with ``sendmsg`` and no thread polls.
"""
