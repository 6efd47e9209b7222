//! What this kernel can do for checkpoint/restore: one probe per feature, each
//! really exercising the interface it names.
