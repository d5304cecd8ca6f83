#!/bin/sh
# The container's entrypoint: BLAS and OpenMP threads from the CPUs this container may use,
# then the command (exec'd, so that it is PID 1 and receives SIGTERM itself).
#
# NumPy's OpenBLAS otherwise starts a thread for every CPU of the host, however few the
# container's limit lets it use, and they spend the quota waiting on each other. The count is
# the smaller of the CPUs this process may run on (nproc) and the CPU quota of its cgroup,
# rounded up (cgroup v2: cpu.max "QUOTA PERIOD", "max" when unlimited; cgroup v1:
# cpu.cfs_quota_us and cpu.cfs_period_us, -1 when unlimited). OPENBLAS_NUM_THREADS and
# OMP_NUM_THREADS set by the operator are left as they are. CGROUP_ROOT says where the cgroup
# files are (default /sys/fs/cgroup).
set -eu

cgroup=${CGROUP_ROOT:-/sys/fs/cgroup}

# The quota in whole CPUs, rounded up; nothing when there is none.
quota_cpus() {
    if [ -r "$cgroup/cpu.max" ]; then
        read -r quota period < "$cgroup/cpu.max" || true  # a last line without its newline still reads
    elif [ -r "$cgroup/cpu/cpu.cfs_quota_us" ] && [ -r "$cgroup/cpu/cpu.cfs_period_us" ]; then
        read -r quota < "$cgroup/cpu/cpu.cfs_quota_us" || true
        read -r period < "$cgroup/cpu/cpu.cfs_period_us" || true
    else
        return 0
    fi
    case "${quota:-x}/${period:-x}" in
        *[!0-9/]*) return 0 ;; # "max" or -1: no quota; a field missing or unreadable: none either
    esac
    if [ "$quota" -gt 0 ] && [ "$period" -gt 0 ]; then
        echo $(((quota + period - 1) / period))
    fi
}

cpus=$(unset OMP_NUM_THREADS OMP_THREAD_LIMIT; nproc)  # GNU nproc would answer with these
quota=$(quota_cpus)
if [ -n "$quota" ] && [ "$quota" -lt "$cpus" ]; then
    cpus=$quota
fi
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$cpus}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}"
exec "$@"
