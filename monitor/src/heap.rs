//! Giving freed heap memory back to the system after a burst of allocations (a `/proc` walk,
//! a state save): glibc keeps freed memory for reuse, so without this the agent's resident
//! size would stay at its largest burst, against a container memory limit.

/// Release the free memory at the top of the heap and in free chunks to the system.
pub fn trim() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
