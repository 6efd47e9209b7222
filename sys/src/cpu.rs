//! CPU facts the extended register state depends on: XCR0 and the XSAVE area
//! size, read with `cpuid`/`xgetbv` (unprivileged on x86_64).

use std::arch::x86_64::__cpuid_count;

/// Offset of the XCR0 copy in an `NT_X86_XSTATE` buffer: the kernel stores the
/// user feature mask in the first 8 bytes of the FXSAVE `sw_reserved` area
/// (arch/x86/include/asm/user.h: `USER_XSTATE_XCR0_WORD` = 464 / 8).
pub const XSTATE_XCR0_OFFSET: usize = 464;

fn osxsave() -> bool {
    // CPUID leaf 1 exists on every x86_64 CPU; ECX bit 27 is OSXSAVE.
    let leaf1 = __cpuid_count(1, 0);
    leaf1.ecx & (1 << 27) != 0
}

/// The XFEATURE_ENABLED_MASK (XCR0) the kernel set up, or `None` when the OS
/// has not enabled XSAVE.
pub fn xcr0() -> Option<u64> {
    if !osxsave() {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set (checked above), so XGETBV with ECX = 0 is a valid,
    // unprivileged instruction that only writes EAX and EDX.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    Some(u64::from(hi) << 32 | u64::from(lo))
}

/// Size in bytes of the standard-format XSAVE area for the features enabled in
/// XCR0 (CPUID leaf 0xD, sub-leaf 0, EBX): the size of `NT_X86_XSTATE`.
pub fn xsave_size() -> Option<u32> {
    if !osxsave() {
        return None;
    }
    Some(__cpuid_count(0xd, 0).ebx)
}

/// Size in bytes of the XSAVE area for every feature the CPU supports
/// (CPUID leaf 0xD, sub-leaf 0, ECX): an upper bound for any xstate buffer.
pub fn xsave_max_size() -> Option<u32> {
    if !osxsave() {
        return None;
    }
    Some(__cpuid_count(0xd, 0).ecx)
}

/// The feature mask (XCR0 as the kernel exposes it to user space) recorded in
/// an `NT_X86_XSTATE` buffer, if the buffer is long enough to carry one.
pub fn xstate_xfeatures(xstate: &[u8]) -> Option<u64> {
    let w = xstate.get(XSTATE_XCR0_OFFSET..XSTATE_XCR0_OFFSET + 8)?;
    Some(u64::from_ne_bytes(w.try_into().ok()?))
}
