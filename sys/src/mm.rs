//! Address-space interfaces: `PR_SET_MM_MAP` and the single-field `PR_SET_MM`
//! ops, the `PAGEMAP_SCAN` ioctl, `ARCH_MAP_VDSO_64`.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::error::{check, Error, Result};

// prctl options (include/uapi/linux/prctl.h).
pub const PR_SET_MM: i32 = 35;
pub const PR_SET_MM_START_CODE: u64 = 1;
pub const PR_SET_MM_END_CODE: u64 = 2;
pub const PR_SET_MM_START_DATA: u64 = 3;
pub const PR_SET_MM_END_DATA: u64 = 4;
pub const PR_SET_MM_START_STACK: u64 = 5;
pub const PR_SET_MM_START_BRK: u64 = 6;
pub const PR_SET_MM_BRK: u64 = 7;
pub const PR_SET_MM_ARG_START: u64 = 8;
pub const PR_SET_MM_ARG_END: u64 = 9;
pub const PR_SET_MM_ENV_START: u64 = 10;
pub const PR_SET_MM_ENV_END: u64 = 11;
pub const PR_SET_MM_AUXV: u64 = 12;
pub const PR_SET_MM_EXE_FILE: u64 = 13;
pub const PR_SET_MM_MAP: u64 = 14;
pub const PR_SET_MM_MAP_SIZE: u64 = 15;

/// `struct prctl_mm_map` (include/uapi/linux/prctl.h), 104 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Address of the auxv array (u64 pairs) in the calling process.
    pub auxv: u64,
    /// Size of the auxv array in bytes.
    pub auxv_size: u32,
    /// An fd of the new executable, or `u32::MAX` (-1) to keep the current one.
    pub exe_fd: u32,
}

const _: () = assert!(std::mem::size_of::<PrctlMmMap>() == 104);

impl PrctlMmMap {
    /// The struct's bytes, e.g. to copy it into a tracee before an injected prctl.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: PrctlMmMap is repr(C) with only integer fields and no
        // padding (11*8 + 8 + 4 + 4 = 104, asserted above).
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP, map, sizeof(*map))` on the calling process.
/// Needs CAP_SYS_RESOURCE or CAP_CHECKPOINT_RESTORE; `exe_fd` fails with EBUSY
/// while the old executable is still mapped.
pub fn prctl_set_mm_map(map: &PrctlMmMap) -> Result<()> {
    // SAFETY: the kernel copies 104 bytes from `map` (and auxv_size bytes from
    // map.auxv, which the caller set to a valid array or a zero size).
    check("prctl(PR_SET_MM, PR_SET_MM_MAP)", unsafe {
        libc::prctl(
            PR_SET_MM,
            PR_SET_MM_MAP,
            map as *const PrctlMmMap,
            std::mem::size_of::<PrctlMmMap>(),
            0,
        ) as libc::c_long
    })?;
    Ok(())
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)`: the struct size this kernel expects.
pub fn prctl_mm_map_size() -> Result<u32> {
    let mut size: u32 = 0;
    // SAFETY: the kernel writes one unsigned int into `size`.
    check("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)", unsafe {
        libc::prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) as libc::c_long
    })?;
    Ok(size)
}

/// A single-field `prctl(PR_SET_MM, op, value)` on the calling process (needs
/// CAP_SYS_RESOURCE).
pub fn prctl_set_mm(op: u64, value: u64) -> Result<()> {
    // SAFETY: single-field ops take a value, not a pointer (PR_SET_MM_AUXV,
    // which takes a pointer, is validated by the kernel with copy_from_user).
    check("prctl(PR_SET_MM)", unsafe {
        libc::prctl(PR_SET_MM, op, value, 0, 0) as libc::c_long
    })?;
    Ok(())
}

// PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7+).
/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = 0xc060_6610;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// Linux 6.14+.
pub const PAGE_IS_GUARD: u64 = 1 << 8;

/// Every category with its name, in bit order.
pub const PAGE_CATEGORIES: &[(u64, &str)] = &[
    (PAGE_IS_WPALLOWED, "wpallowed"),
    (PAGE_IS_WRITTEN, "written"),
    (PAGE_IS_FILE, "file"),
    (PAGE_IS_PRESENT, "present"),
    (PAGE_IS_SWAPPED, "swapped"),
    (PAGE_IS_PFNZERO, "pfnzero"),
    (PAGE_IS_HUGE, "huge"),
    (PAGE_IS_SOFT_DIRTY, "soft_dirty"),
    (PAGE_IS_GUARD, "guard"),
];

/// `struct pm_scan_arg` (include/uapi/linux/fs.h), 96 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `struct page_region` (include/uapi/linux/fs.h): pages `[start, end)` share
/// `categories` (masked by the request's `return_mask`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// A full `PAGEMAP_SCAN` request. A page matches when
/// `((categories ^ category_inverted) & category_mask) == category_mask` and,
/// if `category_anyof_mask` is non-zero, `(categories ^ category_inverted) &
/// category_anyof_mask != 0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest {
    pub start: u64,
    pub end: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
    /// Stop after this many matching pages (0: no limit).
    pub max_pages: u64,
}

/// PAGEMAP_SCAN ioctl on an open /proc/PID/pagemap fd; returns ranges (start,
/// end, categories) of the pages in `[start, end)` having every category of
/// `category_mask`, reporting the categories of `return_mask`.
pub fn pagemap_scan(
    pagemap: BorrowedFd,
    start: u64,
    end: u64,
    category_mask: u64,
    return_mask: u64,
) -> Result<Vec<PageRegion>> {
    pagemap_scan_with(
        pagemap,
        &ScanRequest {
            start,
            end,
            category_mask,
            return_mask,
            ..ScanRequest::default()
        },
    )
}

/// PAGEMAP_SCAN with every field of the request, repeated until the whole
/// range is walked (or `max_pages` matched).
pub fn pagemap_scan_with(pagemap: BorrowedFd, req: &ScanRequest) -> Result<Vec<PageRegion>> {
    let mut out = Vec::new();
    let mut buf = vec![PageRegion::default(); 512];
    let mut start = req.start;
    let mut budget = req.max_pages;
    while start < req.end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: req.flags,
            start,
            end: req.end,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages: budget,
            category_inverted: req.category_inverted,
            category_mask: req.category_mask,
            category_anyof_mask: req.category_anyof_mask,
            return_mask: req.return_mask,
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `buf`,
        // valid for `vec_len` page_regions; the kernel writes regions there and
        // updates walk_end in `arg`.
        let n = check("ioctl(PAGEMAP_SCAN)", unsafe {
            libc::ioctl(
                pagemap.as_raw_fd(),
                PAGEMAP_SCAN as _,
                &mut arg as *mut PmScanArg,
            ) as libc::c_long
        })? as usize;
        for r in &buf[..n.min(buf.len())] {
            if budget != 0 {
                budget = budget.saturating_sub((r.end - r.start) / page_size());
            }
            // The kernel may split one run across two calls: merge it back.
            match out.last_mut() {
                Some(PageRegion {
                    end, categories, ..
                }) if *end == r.start && *categories == r.categories => *end = r.end,
                _ => out.push(*r),
            }
        }
        if arg.walk_end <= start {
            return Err(Error::new("ioctl(PAGEMAP_SCAN)", Errno::EIO));
        }
        start = arg.walk_end;
        if req.max_pages != 0 && budget == 0 {
            break;
        }
    }
    Ok(out)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        ps as u64
    } else {
        4096
    }
}

// arch_prctl codes (arch/x86/include/uapi/asm/prctl.h).
pub const ARCH_MAP_VDSO_X32: i32 = 0x2001;
pub const ARCH_MAP_VDSO_32: i32 = 0x2002;
pub const ARCH_MAP_VDSO_64: i32 = 0x2003;

/// `arch_prctl(ARCH_MAP_VDSO_64, addr)`: maps this kernel's 64-bit vDSO (with
/// its [vvar] pages in front) at `addr` in the calling process. Fails with
/// EEXIST while a vDSO is still mapped.
pub fn arch_map_vdso_64(addr: u64) -> Result<()> {
    // SAFETY: arch_prctl with an integer argument; the kernel validates addr.
    check("arch_prctl(ARCH_MAP_VDSO_64)", unsafe {
        libc::syscall(libc::SYS_arch_prctl, ARCH_MAP_VDSO_64, addr)
    })?;
    Ok(())
}

/// `PROCMAP_QUERY` (include/uapi/linux/fs.h): `_IOWR('f', 17, struct procmap_query)`.
pub const PROCMAP_QUERY: u64 = 0xc068_6611;

/// `struct procmap_query` (include/uapi/linux/fs.h), 104 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

const _: () = assert!(std::mem::size_of::<ProcmapQuery>() == 104);

/// The area of a process that contains `addr` (PROCMAP_QUERY ioctl on an
/// open /proc/PID/maps fd, Linux 6.11+): its start, end and the name
/// /proc/PID/maps shows for it (`[vdso]`, a path, or empty). `Ok(None)`
/// when no area contains `addr`; ENOTTY when the kernel lacks the ioctl.
pub fn procmap_query(maps: BorrowedFd, addr: u64) -> Result<Option<(u64, u64, String)>> {
    let mut name = vec![0u8; 4096];
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: addr,
        vma_name_size: name.len() as u32,
        vma_name_addr: name.as_mut_ptr() as u64,
        ..ProcmapQuery::default()
    };
    // SAFETY: `q` is a valid procmap_query whose name buffer points at
    // `name`, valid for `vma_name_size` bytes; the kernel fills both.
    let ret = unsafe {
        libc::ioctl(
            maps.as_raw_fd(),
            PROCMAP_QUERY as _,
            &mut q as *mut ProcmapQuery,
        )
    };
    if ret == -1 {
        let e = Error::last("ioctl(PROCMAP_QUERY)");
        return if e.errno == Errno::ENOENT {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // vma_name_size counts the terminating NUL; 0 when the area has no name.
    let len = (q.vma_name_size as usize).min(name.len());
    name.truncate(len);
    if name.last() == Some(&0) {
        name.pop();
    }
    Ok(Some((
        q.vma_start,
        q.vma_end,
        String::from_utf8_lossy(&name).into_owned(),
    )))
}
