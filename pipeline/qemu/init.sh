#!/bin/busybox sh
# PID 1 of the `permtrace groundtruth qemu` initramfs.
#
# Loads the modules listed in /modlist (paths under /lib/modules, in load
# order), then removes them in reverse order, tracing the kernel's
# executable-memory paths with kprobes, and prints everything to the serial
# console.  The output format is the one of shared/groundtruth/qemu/init.sh,
# which traces.importers.ftrace reads:
#   - "GT ..." status lines (kprobes attached, vmstat/meminfo snapshots
#     before / after loading / after unloading);
#   - trace_marker lines "GT start", "GT insmod <path>", "GT vmstat <counters>"
#     (after every insmod and rmmod), "GT rmmod-all", "GT rmmod <name>", "GT end";
#   - the trace of instance "gt" between "=====GT TRACE BEGIN" and
#     "=====GT TRACE END";
# then it powers the guest off.  Extra status lines for the trace metadata:
# "GT memtotal", "GT buddyinfo", "GT pagetypeinfo" (free memory at start).
#
# Kernel command line switches: gt_cpa (also probe __change_page_attr_set_clr,
# which shows the direct-map alias, i.e. the PFN, of every page CPA touches),
# gt_buf=KB (per-CPU trace buffer, default 16384).
# If this script ever exits, the kernel panics and, with panic=-1 and QEMU's
# -no-reboot, QEMU exits: a broken guest never hangs the host.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug

CPA=0
BUF=16384
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    gt_cpa) CPA=1 ;;
    gt_buf=*) BUF=${arg#gt_buf=} ;;
  esac
done

T=/sys/kernel/tracing
uptime_s() { cut -d' ' -f1 /proc/uptime; }
listdir() { ls "$1" 2>&1 | tr '\n' ' '; }
# prefix every line of stdin with "GT $1 "
gt() { sed "s/^/GT $1 /"; }

echo "GT init-uptime $(uptime_s) kernel $(uname -r) cpus $(nproc)"
echo "GT have-ptdump: $(listdir /sys/kernel/debug/page_tables)"
echo "GT events: vmalloc=[$(listdir $T/events/vmalloc)] module=[$(listdir $T/events/module)] ipi=[$(listdir $T/events/ipi)] csd=[$(listdir $T/events/csd)] tlb=[$(listdir $T/events/tlb)]"

# Which of the probed functions exist (some are inlined or renamed .part/.cold).
grep -E ' [tT] [._a-z]*(split_large_page|vm_reset_perms|vm_unmap_aliases|purge_vmap_area_lazy|free_vmap_area_noflush|alloc_vmap_area|cpa_flush|change_page_attr_set_clr|vm_remove_mappings|set_memory_rox|module_alloc|module_memfree|execmem_[a-z_]+|bpf_prog_pack_[a-z]+|collapse_large_pages|text_poke_bp_batch|smp_text_poke_batch_finish)[.a-z0-9]*$' /proc/kallsyms | gt kallsyms

# A private instance, so nothing else in the guest can disturb the buffer; its
# tracepoints trace from here on (a new instance traces at once), so the
# setup's own vmalloc traffic (kprobe instruction pages) is in the log.
I=$T/instances/gt
mkdir $I
echo "$BUF" > $I/buffer_size_kb
for e in vmalloc module tlb ipi csd; do
  [ -d $I/events/$e ] && echo 1 > $I/events/$e/enable
done
# Received call-function IPIs, one event per target CPU.
for e in call_function_entry call_function_single_entry; do
  [ -d $I/events/irq_vectors/$e ] && echo 1 > $I/events/irq_vectors/$e/enable
done

# Kprobe events stand in for the vmalloc/ipi/csd tracepoints 6.1 lacks.
# Each is tried on its own: a function that is inlined on this kernel only
# costs its own probe.  Argument registers follow the x86-64 C ABI
# (%di, %si, %dx, %cx = first four arguments).
kp() {
  if echo "$1" >> $T/kprobe_events 2>/dev/null; then echo "GT kprobe ok: $1"; else echo "GT kprobe FAIL: $1"; fi
}
kp 'p:gt/split __split_large_page kpte=%si:x64 addr=%dx:x64'
kp 'p:gt/split split_large_page kpte=%si:x64 addr=%dx:x64'
kp 'p:gt/alloc_va alloc_vmap_area size=%di:u64 align=%si:u64 vstart=%dx:x64 vend=%cx:x64'
kp 'r:gt/alloc_va_ret alloc_vmap_area va_start=+0($retval):x64 va_end=+8($retval):x64'
kp 'p:gt/free_va free_vmap_area_noflush va_start=+0(%di):x64 va_end=+8(%di):x64'
kp 'p:gt/purge __purge_vmap_area_lazy start=%di:x64 end=%si:x64'
kp 'p:gt/vm_remove_mappings vm_remove_mappings deallocate_pages=%si:s32'
kp 'p:gt/flush_krange flush_tlb_kernel_range start=%di:x64 end=%si:x64'
kp 'p:gt/flush_all flush_tlb_all'
kp 'p:gt/on_each_cpu on_each_cpu_cond_mask func=%si:symbol'
kp 'p:gt/set_ro set_memory_ro addr=%di:x64 npages=%si:s32'
kp 'p:gt/set_x set_memory_x addr=%di:x64 npages=%si:s32'
kp 'p:gt/set_nx set_memory_nx addr=%di:x64 npages=%si:s32'
kp 'p:gt/set_rw set_memory_rw addr=%di:x64 npages=%si:s32'
kp 'p:gt/vm_reset_perms vm_reset_perms'
# Functions that exist on some kernels only: probed where kallsyms has them.
has() { grep -qE " [tTW] $1\$" /proc/kallsyms; }
has set_memory_rox && kp 'p:gt/set_rox set_memory_rox addr=%di:x64 npages=%si:s32'
has vm_unmap_aliases && kp 'p:gt/vm_unmap_aliases vm_unmap_aliases'
# 6.9+: the vmap node an area was allocated for, (node + 1) << 8 in struct vmap_area's
# flags (+64: va_start, va_end, rb_node, list, union) - whose pool its purge fills.
has vmap_node_shrink_scan && kp 'p:gt/free_node free_vmap_area_noflush va_start=+0(%di):x64 flags=+64(%di):x64'
# Module memory: module_alloc (up to 6.3), execmem_alloc(type, size) (6.10+) under the same name.
if has module_alloc; then
  kp 'p:gt/module_alloc module_alloc size=%di:u64'
  kp 'r:gt/module_alloc_ret module_alloc ret=$retval:x64'
elif has execmem_alloc; then
  kp 'p:gt/module_alloc execmem_alloc type=%di:s32 size=%si:u64'
  kp 'r:gt/module_alloc_ret execmem_alloc ret=$retval:x64'
fi
has module_memfree && kp 'p:gt/module_memfree module_memfree addr=%di:x64'
has execmem_free && kp 'p:gt/module_memfree execmem_free addr=%di:x64'
has bpf_prog_pack_alloc && kp 'p:gt/pack_alloc bpf_prog_pack_alloc size=%di:u32'
has bpf_prog_pack_free && kp 'p:gt/pack_free bpf_prog_pack_free hdr=%di:x64'
# The execmem ROX cache (6.14+) and the large-page collapse that comes with it.
has execmem_alloc_rw && kp 'p:gt/execmem_alloc_rw execmem_alloc_rw type=%di:s32 size=%si:u64'
has execmem_cache_populate && kp 'p:gt/execmem_cache_populate execmem_cache_populate range=%di:x64 size=%si:u64'
has execmem_cache_alloc && kp 'p:gt/execmem_cache_alloc execmem_cache_alloc range=%di:x64 size=%si:u64'
has execmem_cache_free && kp 'p:gt/execmem_cache_free execmem_cache_free ptr=%di:x64'
has execmem_vmalloc && kp 'p:gt/execmem_vmalloc execmem_vmalloc range=%di:x64 size=%si:u64 vmflags=%cx:x64'
has execmem_restore_rox && kp 'p:gt/execmem_restore_rox execmem_restore_rox ptr=%di:x64 size=%si:u64'
has execmem_make_temp_rw && kp 'p:gt/execmem_make_temp_rw execmem_make_temp_rw ptr=%di:x64 size=%si:u64'
has execmem_force_rw && kp 'p:gt/execmem_force_rw execmem_force_rw ptr=%di:x64 size=%si:u64'
has execmem_fill_trapping_insns && kp 'p:gt/execmem_fill_trap execmem_fill_trapping_insns ptr=%di:x64 size=%si:u64'
has cpa_collapse_large_pages && kp 'p:gt/cpa_collapse cpa_collapse_large_pages'
if has collapse_large_pages; then
  kp 'p:gt/collapse_large_pages collapse_large_pages addr=%di:x64'
  kp 'r:gt/collapse_ret collapse_large_pages ret=$retval:s32'
fi
has set_direct_map_valid_noflush && kp 'p:gt/set_dmap_valid set_direct_map_valid_noflush page=%di:x64 nr=%si:s32 valid=%dx:u8'
kp 'p:gt/unmap_aliases _vm_unmap_aliases start=%di:x64 end=%si:x64 flush_dmap=%dx:s32'
# struct cpa_data (arch/x86/mm/pat/set_memory.c, 6.1): vaddr pointer at +0,
# numpages at +32, flags at +56.
[ "$CPA" = 1 ] && kp 'p:gt/cpa __change_page_attr_set_clr vaddr=+0(+0(%di)):x64 numpages=+32(%di):u64 flags=+56(%di):x32 checkalias=%si:s32'
if has text_poke_bp_batch; then kp 'p:gt/text_poke_bp_batch text_poke_bp_batch nr=%si:u32'
else kp 'p:gt/text_poke_bp_batch smp_text_poke_batch_finish'; fi   # 7.0+

# The kprobes, enabled now that they exist.
echo 1 > $I/events/gt/enable
echo "GT enabled: $(tr '\n' ' ' < $I/set_event)"

snapshot() {
  grep -E 'direct_map' /proc/vmstat | gt "vmstat-$1"
  grep -E 'DirectMap|VmallocUsed' /proc/meminfo | gt "meminfo-$1"
}
mark() { echo "GT $*" > $I/trace_marker; }
mark_vmstat() { mark "vmstat $(grep direct_map_level /proc/vmstat | tr '\n' ' ')"; }

# 6.9+ keeps purged vmalloc VA in per-CPU-node pools that no event shows; the
# setup's purges filled them.  Dropping slab caches runs the vmap-node
# shrinker, which gives every pool back to the free tree (vmap_node_shrink_scan),
# so the workload starts from empty pools.
echo 2 > /proc/sys/vm/drop_caches && mark vmap-pools-drained
grep MemTotal /proc/meminfo | gt memtotal
gt buddyinfo < /proc/buddyinfo
gt pagetypeinfo < /proc/pagetypeinfo
snapshot before

echo 1 > $I/tracing_on
mark start
t0=$(uptime_s)
n=0
for m in $(cat /modlist); do
  mark "insmod $m"
  if insmod /lib/modules/$m 2>/tmp/err; then n=$((n + 1)); else echo "GT insmod-fail $m $(cat /tmp/err)"; fi
  mark_vmstat
done
t1=$(uptime_s)
echo "GT loaded $n modules in $t0 -> $t1"
snapshot loaded
lsmod | wc -l | gt lsmod-lines

mark rmmod-all
# reverse load order, so that every module is removed after its users
for m in $(sed '1!G;h;$!d' /modlist); do
  b=$(basename $m .ko)
  mark "rmmod $b"
  rmmod $b 2>/dev/null
  mark_vmstat
done
# let deferred frees (RCU, workqueues) land inside the trace
sleep 1
mark end
echo "GT unloaded at $(uptime_s), lsmod-lines $(lsmod | wc -l)"
snapshot after
echo 0 > $I/tracing_on

echo "GT trace-stats $(grep -E 'entries|overrun' $I/per_cpu/cpu0/stats | tr '\n' ' ')"
# every CPU's buffer: a non-zero overrun means events were lost
for c in $I/per_cpu/cpu*; do
  echo "GT trace-stats-${c##*/} $(grep -E 'entries|overrun' $c/stats | tr '\n' ' ')"
done
echo "=====GT TRACE BEGIN"
cat $I/trace
echo "=====GT TRACE END"
echo "GT done-uptime $(uptime_s)"
poweroff -f
