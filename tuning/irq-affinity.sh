#!/usr/bin/env bash
# irq-affinity.sh: place a NIC's interrupts and RPS work relative to uturn's shard cores.
#
# Two placements, chosen by whether --same-cores is given:
#
#   default: IRQs and RPS go to the cores uturn's shards do NOT use.
#     The kernel's receive work (hard IRQ, NAPI poll, IP/UDP processing, socket enqueue)
#     then runs beside the shards instead of stealing their cycles. Better when the host
#     has spare cores (e.g. 8 cores, --cores 2-7, NIC on 0-1), at high packet rates, and
#     when latency jitter on the shards matters: a shard is never preempted by softirq
#     work. Cost: each packet crosses cores (cache line transfers between the core that
#     enqueues it and the shard that reads it), and the non-shard cores must be able to
#     keep up with the whole receive path at the target packet rate.
#
#   --same-cores: IRQs and RPS go onto the shard cores themselves.
#     Better on small hosts where every core runs a shard (e.g. 4 vCPUs, --cores 0-3), or
#     when the NIC has at least as many queues as there are shards: the work is spread
#     over all cores and a packet is often processed on the core that consumes it. Cost:
#     softirq time is taken from the shards, so a burst shows up as shard latency.
#     (SO_REUSEPORT picks a listening socket by flow hash, not by CPU, so locality is
#     likely, not guaranteed.)
#
# Either way, leave one core for the OS and uturn's stats thread if you can.
#
# RPS (receive packet steering) spreads protocol processing of a queue over several
# cores in software. It helps when the NIC has fewer receive queues than target cores
# (typically virtio-net with one queue); with enough hardware queues it only adds
# inter-processor interrupts. --rps auto (the default) turns it on exactly in the first
# case and off (mask 0) otherwise.
#
# irqbalance rewrites IRQ affinities periodically: stop it, or ban the cores
# (IRQBALANCE_BANNED_CPULIST), or these settings will not last. Affinities and RPS masks
# are not persistent: run this again at boot (e.g. from a oneshot unit before uturn).
#
# Safe to run twice: every value is compared first and written only if it differs.

set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS] NIC CORES

Spread the interrupts and RPS work of network interface NIC over the cores that uturn's
shards do not use (default), or over the shard cores themselves (--same-cores).

  NIC      network interface carrying TURN traffic, e.g. eth0, ens5f0
  CORES    uturn's shard cores, same syntax as uturn --cores: 0-3,6

Options:
  -n, --dry-run      print what would change; needs no root, changes nothing
  -s, --same-cores   put IRQs and RPS on the shard cores instead of the other cores
      --rps MODE     auto (default): RPS on when the NIC has fewer RX queues than
                     target cores, off otherwise; on: always; off: mask 0; keep: leave
                     the RPS masks as they are
  -h, --help         this text

Without --dry-run it must run as root. Exit status: 0 done (or nothing to do),
1 bad input or unusable NIC, 3 some values could not be written (e.g. IRQs whose
affinity the kernel manages itself).

Examples:
  $PROG --dry-run eth0 2-5
  $PROG eth0 2-5                 # IRQs + RPS on every online core except 2-5
  $PROG --same-cores eth0 0-3    # 4-core VM: everything on the shard cores
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}
warn() { echo "$PROG: warning: $*" >&2; }

# --- core lists --------------------------------------------------------------------

# parse_cpulist "0-3,6" -> prints "0 1 2 3 6" (sorted, unique). Returns 1 on bad syntax
# or a core listed twice (uturn refuses duplicates too). Empty input is an error.
parse_cpulist() {
    local spec=$1 part a b c
    local -A seen=()
    local -a list=()
    spec=${spec//[[:space:]]/}
    [[ -n $spec ]] || return 1
    local IFS=,
    local -a parts
    read -r -a parts <<<"$spec"
    [[ ${spec: -1} != , ]] || return 1
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            a=$((10#${BASH_REMATCH[1]}))
            b=$((10#${BASH_REMATCH[2]}))
        elif [[ $part =~ ^[0-9]+$ ]]; then
            a=$((10#$part))
            b=$a
        else
            return 1
        fi
        ((a <= b)) || return 1
        ((b < 65536)) || return 1
        for ((c = a; c <= b; c++)); do
            [[ -z ${seen[$c]:-} ]] || return 1
            seen[$c]=1
            list+=("$c")
        done
    done
    # sort numerically
    printf '%s\n' "${list[@]}" | sort -n | tr '\n' ' ' | sed 's/ $//'
}

# Same syntax, but duplicates and overlapping ranges are fine (kernel output never has
# them; this is for reading the kernel's own lists).
parse_kernel_cpulist() {
    local spec=$1 part a b c
    local -a list=()
    spec=${spec//[[:space:]]/}
    [[ -n $spec ]] || return 0
    local IFS=,
    local -a parts
    read -r -a parts <<<"$spec"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            a=$((10#${BASH_REMATCH[1]}))
            b=$((10#${BASH_REMATCH[2]}))
        elif [[ $part =~ ^[0-9]+$ ]]; then
            a=$((10#$part))
            b=$a
        else
            continue
        fi
        for ((c = a; c <= b; c++)); do list+=("$c"); done
    done
    printf '%s\n' "${list[@]}" | sort -n -u | tr '\n' ' ' | sed 's/ $//'
}

# compact "0 1 2 3 6" -> "0-3,6"
compact_cpulist() {
    local -a cpus
    read -r -a cpus <<<"$1"
    local out="" start="" prev="" c
    for c in "${cpus[@]}"; do
        if [[ -z $start ]]; then
            start=$c
            prev=$c
        elif ((c == prev + 1)); then
            prev=$c
        else
            out+="${out:+,}$start"
            ((prev == start)) || out+="-$prev"
            start=$c
            prev=$c
        fi
    done
    if [[ -n $start ]]; then
        out+="${out:+,}$start"
        ((prev == start)) || out+="-$prev"
    fi
    printf '%s' "$out"
}

# cpumask "0 1 2 3 6" NBITS -> "0000004f" (32-bit hex words, highest first, comma
# separated: the format of /sys/class/net/*/queues/rx-*/rps_cpus).
cpumask() {
    local -a cpus
    read -r -a cpus <<<"$1"
    local nbits=$2 nwords w c out=""
    nwords=$(((nbits + 31) / 32))
    ((nwords >= 1)) || nwords=1
    local -a words=()
    for ((w = 0; w < nwords; w++)); do words[w]=0; done
    for c in "${cpus[@]}"; do
        w=$((c / 32))
        words[w]=$((words[w] | (1 << (c % 32))))
    done
    # The kernel prints the top word with only the digits its bits need ("3" on a
    # 2-CPU machine); match that so the value reads back the same.
    local top=$(((nbits - 32 * (nwords - 1) + 3) / 4))
    out=$(printf '%0*x' "$top" "${words[nwords - 1]}")
    for ((w = nwords - 2; w >= 0; w--)); do
        out+=,$(printf '%08x' "${words[w]}")
    done
    printf '%s' "$out"
}

# Normalise a hex mask for comparison: drop commas and leading zeros.
norm_mask() {
    local m=${1//,/}
    m=${m#"${m%%[!0]*}"}
    printf '%s' "${m:-0}"
}

# --- arguments ---------------------------------------------------------------------

DRY_RUN=0
SAME_CORES=0
RPS_MODE=auto
ARGS=()
while (($#)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    -n | --dry-run) DRY_RUN=1 ;;
    -s | --same-cores) SAME_CORES=1 ;;
    --rps)
        (($# >= 2)) || die "--rps needs a value: auto, on, off or keep"
        RPS_MODE=$2
        shift
        ;;
    --rps=*) RPS_MODE=${1#--rps=} ;;
    --)
        shift
        ARGS+=("$@")
        break
        ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) ARGS+=("$1") ;;
    esac
    shift
done

case $RPS_MODE in
auto | on | off | keep) ;;
*) die "--rps must be auto, on, off or keep, not '$RPS_MODE'" ;;
esac

((${#ARGS[@]} == 2)) || {
    usage >&2
    exit 1
}
NIC=${ARGS[0]}
CORES_SPEC=${ARGS[1]}

if ((!DRY_RUN)) && ((EUID != 0)); then
    die "must run as root to change IRQ affinity and RPS (use --dry-run to see what it would do)"
fi

# Interface names are at most 15 bytes and never contain '/' or whitespace; checking
# this before building any /sys or /proc path keeps the input from escaping them.
[[ $NIC =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || die "'$NIC' is not a valid interface name"
[[ $NIC != . && $NIC != .. ]] || die "'$NIC' is not a valid interface name"

physical_nics() {
    local d names=""
    for d in /sys/class/net/*; do
        [[ -e $d/device ]] && names+="${names:+ }${d##*/}"
    done
    printf '%s' "${names:-none found}"
}

NETDIR=/sys/class/net/$NIC
[[ -d $NETDIR ]] || die "no network interface '$NIC' (interfaces with a device: $(physical_nics))"

if [[ $NIC == lo ]] || [[ $(cat "$NETDIR/type" 2>/dev/null) == 772 ]]; then
    die "'$NIC' is the loopback interface: it has no IRQs and no hardware queues, so there is nothing to place. Give the NIC that carries TURN traffic (interfaces with a device: $(physical_nics))."
fi

if [[ ! -e $NETDIR/device ]]; then
    lowers=""
    for l in "$NETDIR"/lower_*; do
        [[ -e $l ]] && lowers+="${lowers:+ }${l##*/lower_}"
    done
    if [[ -n $lowers ]]; then
        die "'$NIC' is a virtual interface (bond, VLAN, bridge...) without IRQs of its own; run this for the interfaces under it: $lowers"
    fi
    die "'$NIC' is a virtual interface (bridge, veth, ifb, tun...) without IRQs of its own; run this for the physical NIC (interfaces with a device: $(physical_nics))"
fi

ONLINE=$(parse_kernel_cpulist "$(cat /sys/devices/system/cpu/online)")
[[ -n $ONLINE ]] || die "cannot read the online CPUs from /sys/devices/system/cpu/online"
# rps_cpus has one bit per possible CPU.
POSSIBLE=$(parse_kernel_cpulist "$(cat /sys/devices/system/cpu/possible 2>/dev/null || cat /sys/devices/system/cpu/online)")
NBITS=$((${POSSIBLE##* } + 1))

SHARD=$(parse_cpulist "$CORES_SPEC") ||
    die "'$CORES_SPEC' is not a core list like uturn's --cores (e.g. 0-3,6; each core once)"
declare -A IS_ONLINE=() IS_SHARD=()
for c in $ONLINE; do IS_ONLINE[$c]=1; done
for c in $SHARD; do
    [[ -n ${IS_ONLINE[$c]:-} ]] ||
        die "core $c is not online (online: $(compact_cpulist "$ONLINE"))"
    IS_SHARD[$c]=1
done

if ((SAME_CORES)); then
    TARGET=$SHARD
    MODE_TEXT="the shard cores"
else
    TARGET=""
    for c in $ONLINE; do
        [[ -n ${IS_SHARD[$c]:-} ]] || TARGET+="${TARGET:+ }$c"
    done
    MODE_TEXT="the cores not used by shards"
    [[ -n $TARGET ]] ||
        die "every online core ($(compact_cpulist "$ONLINE")) is a shard core, so none is left for interrupts; use --same-cores, or give uturn fewer --cores"
fi
read -r -a TARGETS <<<"$TARGET"
NT=${#TARGETS[@]}

echo "NIC $NIC; shard cores $(compact_cpulist "$SHARD"); IRQs and RPS on $MODE_TEXT: $(compact_cpulist "$TARGET")"
((DRY_RUN)) && echo "(dry run: nothing is changed)"

if pgrep -x irqbalance >/dev/null 2>&1; then
    warn "irqbalance is running and will move IRQs again; stop it or set IRQBALANCE_BANNED_CPULIST=$(compact_cpulist "$TARGET")"
fi

FAILED=0
CHANGED=0

# write_value FILE VALUE DESCRIPTION
write_value() {
    local file=$1 value=$2 what=$3
    if ((DRY_RUN)); then
        echo "  $what  [would write '$value' to $file]"
        return 0
    fi
    if { printf '%s\n' "$value" >"$file"; } 2>/dev/null; then
        echo "  $what"
        CHANGED=$((CHANGED + 1))
    else
        warn "could not write $value to $file (kernel-managed IRQ affinity, or the driver refuses)"
        FAILED=$((FAILED + 1))
    fi
}

# --- IRQs --------------------------------------------------------------------------

# Names the NIC's interrupts may carry in /proc/interrupts: the interface name
# (eth0-TxRx-0, ens5f0-rx-1), the virtio device name for virtio-net (virtio2-input.0),
# and the PCI address (mlx5_comp0@pci:0000:3b:00.0).
DEVPATH=$(readlink -f "$NETDIR/device")
NAMES=("$NIC")
DEVNAME=${DEVPATH##*/}
[[ $DEVNAME =~ ^virtio[0-9]+$ ]] && NAMES+=("$DEVNAME")
# MSI/MSI-X vectors of the PCI function behind the NIC (for virtio, its parent).
MSIDIR=""
for d in "$DEVPATH" "${DEVPATH%/*}"; do
    if [[ -d $d/msi_irqs ]]; then
        MSIDIR=$d/msi_irqs
        [[ ${d##*/} =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$ ]] && NAMES+=("pci:${d##*/}")
        break
    fi
done

declare -A IRQ_NAME=()
while read -r line; do
    [[ $line =~ ^[[:space:]]*([0-9]+): ]] || continue
    irq=${BASH_REMATCH[1]}
    label=${line##*[[:space:]]}
    for name in "${NAMES[@]}"; do
        # whole-token match: eth0 must not match eth01 or veth0
        if [[ $line =~ (^|[^[:alnum:]_])"$name"([^[:alnum:]_]|$) ]]; then
            IRQ_NAME[$irq]=$label
            break
        fi
    done
    if [[ -n $MSIDIR && -e $MSIDIR/$irq ]]; then
        IRQ_NAME[$irq]=$label
    fi
done </proc/interrupts

IRQS=()
for irq in $(printf '%s\n' "${!IRQ_NAME[@]}" | sort -n); do
    # Configuration-change vectors (virtioN-config) carry no traffic.
    [[ ${IRQ_NAME[$irq]} == *-config ]] && continue
    [[ -d /proc/irq/$irq ]] || continue
    IRQS+=("$irq")
done

if ((${#IRQS[@]} == 0)); then
    echo "IRQs: none found for $NIC in /proc/interrupts (IRQs named differently, or a shared legacy interrupt); leaving IRQ affinity alone, RPS only."
else
    echo "IRQs: ${#IRQS[@]} for $NIC"
    ((${#IRQS[@]} == 1)) &&
        echo "  one IRQ only (single-queue NIC, e.g. virtio-net without multiqueue): it goes to one core; RPS spreads the rest of the receive work."
    next=0
    declare -A QUEUE_CORE=()
    for irq in "${IRQS[@]}"; do
        label=${IRQ_NAME[$irq]}
        # Queue number = the label's last number (eth0-TxRx-3, virtio2-input.3,
        # mlx5_comp3@pci:...): the RX and TX vectors of one queue land on one core.
        q=""
        stem=${label%@*}
        [[ $stem =~ ([0-9]+)$ ]] && q=${BASH_REMATCH[1]}
        if [[ -n $q ]]; then
            if [[ -z ${QUEUE_CORE[$q]:-} ]]; then
                QUEUE_CORE[$q]=${TARGETS[next % NT]}
                next=$((next + 1))
            fi
            core=${QUEUE_CORE[$q]}
        else
            core=${TARGETS[next % NT]}
            next=$((next + 1))
        fi
        file=/proc/irq/$irq/smp_affinity_list
        current=$(cat "$file" 2>/dev/null || echo "?")
        if [[ $(parse_kernel_cpulist "$current") == "$core" ]]; then
            echo "  IRQ $irq ($label): already on core $core"
        else
            write_value "$file" "$core" "IRQ $irq ($label): cores $current -> $core"
        fi
    done
    if ((${#IRQS[@]} > NT * 2)) && ((!SAME_CORES)); then
        echo "  note: ${#IRQS[@]} IRQs share $NT core(s); at high packet rates that core set may become the bottleneck (watch %soft in mpstat)."
    fi
fi

# --- RPS ---------------------------------------------------------------------------

RXQ=()
for q in "$NETDIR"/queues/rx-*; do
    [[ -e $q/rps_cpus ]] && RXQ+=("$q")
done
NQ=${#RXQ[@]}
if ((NQ == 0)); then
    echo "RPS: $NIC exposes no rx queues with rps_cpus (kernel without CONFIG_RPS?); skipped."
elif [[ $RPS_MODE == keep ]]; then
    echo "RPS: left as it is (--rps keep)."
else
    rps_on=0
    case $RPS_MODE in
    on) rps_on=1 ;;
    off) rps_on=0 ;;
    auto) if ((NQ < NT)); then rps_on=1; fi ;;
    esac
    if ((rps_on)); then
        mask=$(cpumask "$TARGET" "$NBITS")
        echo "RPS: on for $NQ rx queue(s), mask $mask (cores $(compact_cpulist "$TARGET"))"
    else
        mask=$(cpumask "" "$NBITS")
        if [[ $RPS_MODE == auto ]]; then
            echo "RPS: off ($NQ rx queue(s) for $NT target core(s): the hardware queues already spread the work)"
        else
            echo "RPS: off (--rps off)"
        fi
    fi
    for q in "${RXQ[@]}"; do
        file=$q/rps_cpus
        current=$(cat "$file" 2>/dev/null || echo "?")
        if [[ $(norm_mask "$current") == "$(norm_mask "$mask")" ]]; then
            echo "  ${q##*/}: already $current"
        else
            write_value "$file" "$mask" "${q##*/} rps_cpus: $current -> $mask"
        fi
    done
fi

if ((DRY_RUN)); then
    echo "dry run done."
elif ((FAILED)); then
    echo "done: $CHANGED value(s) changed, $FAILED could not be written." >&2
    exit 3
else
    echo "done: $CHANGED value(s) changed."
fi
