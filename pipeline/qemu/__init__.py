"""Ground truth from a stock Debian kernel booted under QEMU (``permtrace groundtruth qemu``).

- :mod:`pipeline.qemu.debian`: pick, download and unpack packages (cached);
- :mod:`pipeline.qemu.modules`: module load order from ``.modinfo`` (no depmod);
- :mod:`pipeline.qemu.initramfs`: the guest image (cpio newc, gzip), with ``init.sh`` as ``/init``;
- :mod:`pipeline.qemu.boot`: the QEMU command line and the timed boot;
- :mod:`pipeline.qemu.guestlog`: the guest's status lines in the serial log;
- :mod:`pipeline.qemu.run`: all of it, then the ftrace importer.
"""

from pipeline.qemu.run import groundtruth_qemu

__all__ = ["groundtruth_qemu"]
