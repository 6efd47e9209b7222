//! Dump and restore of a sandbox's process tree. One module per resource kind,
//! each holding both directions (dump: kernel object to image record; restore:
//! record to kernel object).
