//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a per-CPU hash map, which aya does not wrap: the
//! entry's per-CPU values and its removal in one bpf(2) call, so counters read at removal
//! miss only datagrams a program on another CPU is relaying at that very instant (the
//! kernel supports it for hash maps since 5.14).
//!
//! The only raw system call of the XDP loader glue.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{IterableMap, MapData, PerCpuHashMap};
use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The map-element member of `union bpf_attr` (`map_fd`, `key`, `value`, `flags`).
#[repr(C, align(8))]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Removes `key` and returns its value on every possible CPU, or `None` if absent.
pub(super) fn take<K: Pod, V: Pod>(
    map: &mut PerCpuHashMap<MapData, K, V>,
    key: &K,
    cpus: usize,
) -> io::Result<Option<Vec<V>>> {
    // The kernel writes one value per possible CPU, each padded to 8 bytes.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut buf = vec![0u64; cpus * stride / 8];
    let fd = map.map().fd().as_fd().as_raw_fd();
    let attr = ElemAttr {
        map_fd: fd as u32,
        pad: 0,
        key: key as *const K as u64,
        value: buf.as_mut_ptr() as u64,
        flags: 0,
    };
    // `attr` is a valid bpf_attr prefix of the size passed; `fd` is the map's open
    // descriptor borrowed from `map`.
    // SAFETY: `key` points to a `K` of the map's key size (aya checked it when the map was
    // typed), `buf` to the `cpus * stride` bytes the kernel writes; all outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            size_of::<ElemAttr>() as u32,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    let bytes: &[u8] = bytemuck_bytes(&buf);
    let values = (0..cpus)
        .map(|cpu| {
            let start = cpu * stride;
            // SAFETY: `start + size_of::<V>()` is within `bytes` (cpus * stride bytes);
            // `V: Pod` is valid for any bit pattern, and read_unaligned needs no alignment.
            unsafe { std::ptr::read_unaligned(bytes[start..].as_ptr() as *const V) }
        })
        .collect();
    Ok(Some(values))
}

fn bytemuck_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: a u64 slice is readable as bytes: same memory, length times 8, alignment 1.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) }
}
