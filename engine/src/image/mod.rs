//! The image: a directory holding a manifest, JSON metadata and raw page data.
//!
//! `format` holds the serde types of every record; `dir` holds the container:
//! writing files with their checksums, the manifest written last (so a partial
//! image is never mistaken for a good one), and reading with every file's size
//! and checksum verified and every length bounded before allocation.
//! The layout is documented in docs/image-format.md.

mod dir;
pub mod format;
pub(crate) mod hash;
pub mod refs;

pub use dir::{ImageReader, ImageWriter, PageSink, StreamedFile};
pub use format::*;
pub use hash::{xxh3_64, Checksum};

/// The format's major version written into the manifest: a reader refuses
/// any other major (but `LEGACY_FORMAT_VERSION`). Version 1 grew fields
/// for years without a version change; 2 is version 1 as it stands, with
/// minors from here on.
pub const FORMAT_VERSION: u32 = 2;
/// The format's minor version: a field added to a record is a new minor. A
/// reader refuses an image of a newer minor unless every field it does not
/// know is declared ignorable (the manifest's `ignorable`).
pub const FORMAT_MINOR: u32 = 0;
/// The major version before minors existed: read as it always was (every
/// field it may lack has a default).
pub const LEGACY_FORMAT_VERSION: u32 = 1;
/// Fields of this minor and earlier ones that an older reader may ignore
/// (`file-pattern:key`, written into the manifest's `ignorable`).
pub const IGNORABLE: &[&str] = &[];
/// Magic string at the head of every manifest.
pub const MAGIC: &str = "stasis-image";
/// Page size of this architecture.
pub const PAGE_SIZE: u64 = 4096;

/// Upper bounds on what an image may claim, checked before anything is allocated.
pub mod limits {
    /// Largest metadata (JSON) file read into memory.
    pub const MAX_JSON_BYTES: u64 = 256 << 20;
    /// Largest manifest.
    pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
    /// Most processes in one image.
    pub const MAX_PROCESSES: usize = 32768;
    /// Most threads in one process.
    pub const MAX_THREADS: usize = 32768;
    /// Most memory areas in one process.
    pub const MAX_VMAS: usize = 1 << 20;
    /// Most fds in one process.
    pub const MAX_FDS: usize = 1 << 20;
    /// Largest xstate buffer.
    pub const MAX_XSTATE: usize = 64 << 10;
    /// Highest fd number (the kernel's own ceiling, fs.nr_open, is below
    /// 2^31; this keeps the restore's fd arithmetic far from overflow).
    pub const MAX_FD_NUMBER: i32 = 1 << 30;
    /// Largest auxv.
    pub const MAX_AUXV_WORDS: usize = 512;
    /// Largest pipe buffer restored.
    pub const MAX_PIPE_BYTES: u64 = 1 << 20;
}
