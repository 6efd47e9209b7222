//! Checkpointable sandboxes: namespaces, stasis's own init as PID 1, mounts,
//! cgroup, network, profiles and the per-sandbox state directory.
