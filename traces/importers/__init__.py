"""Importers of foreign formats into schema-v1 traces plus observations.

- :mod:`traces.importers.ftrace`: tracefs / ``trace-cmd report`` text and
  serial logs of the QEMU guests (``shared/groundtruth/qemu/init.sh``).
- :mod:`traces.importers.bpftool`: BPF program sizes from
  ``bpftool prog show --json`` (or the ``progs`` list of a ground-truth case
  JSON).
- :mod:`traces.importers.kernel`: the shared kernel-event -> workload-op
  logic both of the above and :mod:`traces.record` feed.
"""
