//! The kernel's special mappings ([vvar], [vvar_vclock], [vdso], [vsyscall])
//! as data: the engine records and restores them by this description, and
//! `stasis check` reports whether the running kernel's layout is known.

use serde::{Deserialize, Serialize};

/// Names of the special mappings, as /proc/PID/maps shows them.
pub const SPECIAL_NAMES: &[&str] = &["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"];

/// Layouts of the vDSO block (contiguous, in address order) that stasis
/// knows how to move back as one block: Linux 6.13+ split the clock pages
/// into [vvar_vclock]; older kernels have [vvar] then [vdso].
pub const KNOWN_LAYOUTS: &[&[&str]] = &[
    &["[vvar]", "[vvar_vclock]", "[vdso]"],
    &["[vvar]", "[vdso]"],
];

/// One special mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialMapping {
    pub name: String,
    pub start: u64,
    pub end: u64,
}

impl SpecialMapping {
    /// Length in pages of 4 KiB.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / 4096
    }
}

/// The special mappings of a process and what stasis makes of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// In address order, [vsyscall] included.
    pub mappings: Vec<SpecialMapping>,
    /// The vDSO block ([vvar]... [vdso]) is contiguous.
    pub contiguous: bool,
    /// The vDSO block matches one of [`KNOWN_LAYOUTS`].
    pub known: bool,
}

impl Layout {
    /// Parses the special mappings out of /proc/PID/maps text.
    pub fn from_maps(maps: &str) -> Layout {
        let mut mappings = Vec::new();
        for line in maps.lines() {
            let mut cols = line.split_whitespace();
            let range = cols.next().unwrap_or_default();
            let name = cols.nth(4).unwrap_or_default();
            if !SPECIAL_NAMES.contains(&name) {
                continue;
            }
            let Some((s, e)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
            else {
                continue;
            };
            mappings.push(SpecialMapping {
                name: name.to_string(),
                start,
                end,
            });
        }
        mappings.sort_by_key(|m| m.start);
        let block = Self::block_of(&mappings);
        let contiguous = block.windows(2).all(|w| w[0].end == w[1].start);
        let names: Vec<&str> = block.iter().map(|m| m.name.as_str()).collect();
        let known = contiguous && KNOWN_LAYOUTS.contains(&names.as_slice());
        Layout {
            mappings,
            contiguous,
            known,
        }
    }

    fn block_of(mappings: &[SpecialMapping]) -> Vec<&SpecialMapping> {
        mappings.iter().filter(|m| m.name != "[vsyscall]").collect()
    }

    /// The layout of process `pid` (`None`: this process).
    pub fn of(pid: Option<i32>) -> std::io::Result<Layout> {
        let path = match pid {
            Some(p) => format!("/proc/{p}/maps"),
            None => "/proc/self/maps".to_string(),
        };
        Ok(Self::from_maps(&std::fs::read_to_string(path)?))
    }

    /// The vDSO block ([vvar] ... [vdso]) without [vsyscall].
    pub fn block(&self) -> Vec<&SpecialMapping> {
        Self::block_of(&self.mappings)
    }

    /// Start and end of the vDSO block.
    pub fn block_range(&self) -> Option<(u64, u64)> {
        let b = self.block();
        Some((b.first()?.start, b.last()?.end))
    }

    /// "[vvar] 4 pages, [vvar_vclock] 2 pages, [vdso] 2 pages".
    pub fn describe(&self) -> String {
        self.mappings
            .iter()
            .map(|m| {
                let n = m.pages();
                format!("{} {} page{}", m.name, n, if n == 1 { "" } else { "s" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS_6_18: &str = "\
7ffd1c5e0000-7ffd1c601000 rw-p 00000000 00:00 0                          [stack]
7ffd1c6ec000-7ffd1c6f0000 r--p 00000000 00:00 0                          [vvar]
7ffd1c6f0000-7ffd1c6f2000 r--p 00000000 00:00 0                          [vvar_vclock]
7ffd1c6f2000-7ffd1c6f4000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_the_6_13_layout() {
        let l = Layout::from_maps(MAPS_6_18);
        assert!(l.known && l.contiguous);
        assert_eq!(
            l.describe(),
            "[vvar] 4 pages, [vvar_vclock] 2 pages, [vdso] 2 pages, [vsyscall] 1 page"
        );
        assert_eq!(l.block_range(), Some((0x7ffd1c6ec000, 0x7ffd1c6f4000)));
    }

    #[test]
    fn a_gap_or_a_new_name_is_unknown() {
        let gap = MAPS_6_18.replace("7ffd1c6f2000-7ffd1c6f4000", "7ffd1c6f3000-7ffd1c6f5000");
        let l = Layout::from_maps(&gap);
        assert!(!l.contiguous && !l.known);
        let old = "7f00-8000 r--p 0 00:00 0 [vvar]\n8000-a000 r-xp 0 00:00 0 [vdso]\n";
        assert!(Layout::from_maps(old).known);
        let reversed = "7000-9000 r-xp 0 00:00 0 [vdso]\n9000-d000 r--p 0 00:00 0 [vvar]\n";
        assert!(!Layout::from_maps(reversed).known);
    }
}
