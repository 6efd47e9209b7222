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

/// A CPUID feature bit: its name (as /proc/cpuinfo spells it), leaf,
/// sub-leaf, register (0 = EAX, 1 = EBX, 2 = ECX, 3 = EDX) and bit.
struct Bit(&'static str, u32, u32, u8, u8);

/// The instruction-set features programs choose code paths by (libc's
/// string functions, JIT compilers, math and crypto libraries): a process
/// dumped on a CPU with one of them may run code that needs it.
const FEATURE_BITS: &[Bit] = &[
    Bit("sse3", 1, 0, 2, 0),
    Bit("pclmulqdq", 1, 0, 2, 1),
    Bit("ssse3", 1, 0, 2, 9),
    Bit("fma", 1, 0, 2, 12),
    Bit("cx16", 1, 0, 2, 13),
    Bit("sse4_1", 1, 0, 2, 19),
    Bit("sse4_2", 1, 0, 2, 20),
    Bit("movbe", 1, 0, 2, 22),
    Bit("popcnt", 1, 0, 2, 23),
    Bit("aes", 1, 0, 2, 25),
    Bit("xsave", 1, 0, 2, 26),
    Bit("avx", 1, 0, 2, 28),
    Bit("f16c", 1, 0, 2, 29),
    Bit("rdrand", 1, 0, 2, 30),
    Bit("sse", 1, 0, 3, 25),
    Bit("sse2", 1, 0, 3, 26),
    Bit("fsgsbase", 7, 0, 1, 0),
    Bit("bmi1", 7, 0, 1, 3),
    Bit("hle", 7, 0, 1, 4),
    Bit("avx2", 7, 0, 1, 5),
    Bit("bmi2", 7, 0, 1, 8),
    Bit("erms", 7, 0, 1, 9),
    Bit("rtm", 7, 0, 1, 11),
    Bit("avx512f", 7, 0, 1, 16),
    Bit("avx512dq", 7, 0, 1, 17),
    Bit("rdseed", 7, 0, 1, 18),
    Bit("adx", 7, 0, 1, 19),
    Bit("avx512ifma", 7, 0, 1, 21),
    Bit("clflushopt", 7, 0, 1, 23),
    Bit("clwb", 7, 0, 1, 24),
    Bit("avx512cd", 7, 0, 1, 28),
    Bit("sha_ni", 7, 0, 1, 29),
    Bit("avx512bw", 7, 0, 1, 30),
    Bit("avx512vl", 7, 0, 1, 31),
    Bit("avx512vbmi", 7, 0, 2, 1),
    Bit("waitpkg", 7, 0, 2, 5),
    Bit("avx512_vbmi2", 7, 0, 2, 6),
    Bit("gfni", 7, 0, 2, 8),
    Bit("vaes", 7, 0, 2, 9),
    Bit("vpclmulqdq", 7, 0, 2, 10),
    Bit("avx512_vnni", 7, 0, 2, 11),
    Bit("avx512_bitalg", 7, 0, 2, 12),
    Bit("avx512_vpopcntdq", 7, 0, 2, 14),
    Bit("rdpid", 7, 0, 2, 22),
    Bit("movdiri", 7, 0, 2, 27),
    Bit("movdir64b", 7, 0, 2, 28),
    Bit("fsrm", 7, 0, 3, 4),
    Bit("avx512_vp2intersect", 7, 0, 3, 8),
    Bit("serialize", 7, 0, 3, 14),
    Bit("amx_bf16", 7, 0, 3, 22),
    Bit("avx512_fp16", 7, 0, 3, 23),
    Bit("amx_tile", 7, 0, 3, 24),
    Bit("amx_int8", 7, 0, 3, 25),
    Bit("avx_vnni", 7, 1, 0, 4),
    Bit("avx512_bf16", 7, 1, 0, 5),
    Bit("abm", 0x8000_0001, 0, 2, 5),
    Bit("sse4a", 0x8000_0001, 0, 2, 6),
    Bit("fma4", 0x8000_0001, 0, 2, 16),
    Bit("rdtscp", 0x8000_0001, 0, 3, 27),
];

/// The names of the [`FEATURE_BITS`] this CPU has, in table order.
pub fn features() -> Vec<&'static str> {
    let max_basic = __cpuid_count(0, 0).eax;
    let max_ext = __cpuid_count(0x8000_0000, 0).eax;
    let max_sub7 = if max_basic >= 7 {
        __cpuid_count(7, 0).eax
    } else {
        0
    };
    FEATURE_BITS
        .iter()
        .filter(|b| {
            let present = if b.1 >= 0x8000_0000 {
                b.1 <= max_ext
            } else {
                b.1 <= max_basic && (b.1 != 7 || b.2 <= max_sub7)
            };
            if !present {
                return false;
            }
            let r = __cpuid_count(b.1, b.2);
            let reg = match b.3 {
                0 => r.eax,
                1 => r.ebx,
                2 => r.ecx,
                _ => r.edx,
            };
            reg & (1 << b.4) != 0
        })
        .map(|b| b.0)
        .collect()
}

#[cfg(test)]
mod feature_tests {
    use super::*;

    #[test]
    fn baseline_features_are_found() {
        let f = features();
        // Every x86_64 CPU has SSE and SSE2.
        assert!(f.contains(&"sse") && f.contains(&"sse2"), "{f:?}");
        // Agrees with the kernel's view where both name a feature.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap()
            .split_whitespace()
            .collect();
        for name in ["avx2", "avx512f", "aes", "sse4_2", "bmi2", "popcnt"] {
            assert_eq!(
                f.contains(&name),
                flags.contains(&name),
                "{name}: cpuid and /proc/cpuinfo disagree"
            );
        }
    }
}
